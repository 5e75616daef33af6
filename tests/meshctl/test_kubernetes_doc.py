"""docs/kubernetes.md says what the tests run: its ``meshctl`` commands are checked here.

Every ``meshctl`` line of the document's shell blocks must parse with the real CLI (commands,
options, choices and types as they are now). The walk-through's CA and install commands then run
verbatim against two Kubernetes API doubles (contexts ``cell-1`` and ``cell-2``); what needs a
running mesh (connect, status, services, the suite) runs, with the same flags, on a lab fed
through Kubernetes in ``tests/lab/test_lab_kube.py``.
"""

from __future__ import annotations

import re
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from meshctl.cli import cli
from meshctl.lab.kubeapi import KubeApiDouble, KubeApiThread
from tests.conftest import REPO

DOC = REPO / "docs" / "kubernetes.md"
NS = "cellmesh"


def doc_commands() -> list[list[str]]:
    """The ``meshctl`` command lines of the document's ``sh`` blocks, split like a shell."""
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("meshctl ")]


def parse(args: list[str]) -> list[str]:
    """Resolve and parse ``meshctl ARGS`` as the CLI would, without running it; the command path."""
    ctx = cli.make_context("meshctl", list(args))
    path: list[str] = []
    command: click.Command = cli
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        name, sub, sub_args = command.resolve_command(ctx, rest)
        assert sub is not None, f"meshctl {' '.join(args)}: no command"
        assert name is not None
        path.append(name)
        ctx = sub.make_context(name, sub_args, parent=ctx)
        command = sub
    return path


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MESHCTL_CONFIG", str(tmp_path / "meshctl.json"))
    return tmp_path


def test_every_command_in_the_document_parses(in_tmp: Path) -> None:
    (in_tmp / "mesh-ca").mkdir()  # the directory the walk-through's first command creates
    paths = set()
    for args in doc_commands():
        try:
            paths.add(" ".join(parse(args)))
        except click.UsageError as e:
            raise AssertionError(f"docs/kubernetes.md: meshctl {shlex.join(args)}: {e}") from None
    for expected in ("ca init", "install", "connect", "status", "services", "uninstall",
                     "lab up", "connectivity test", "lab down", "disconnect"):  # fmt: skip
        assert expected in paths, f"docs/kubernetes.md has no 'meshctl {expected}'"


def _mark_ready_when_applied(api: KubeApiDouble, stop: threading.Event) -> None:
    """What the cluster's controllers would do: report the Deployment and DaemonSet ready."""
    while not stop.wait(0.05):
        dep = api.get("apps/v1", "Deployment", "cellmesh-meshapi", NS)
        ds = api.get("apps/v1", "DaemonSet", "cellmesh-agent", NS)
        for obj, status in (
            (dep, {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}),
            (ds, {"desiredNumberScheduled": 2, "currentNumberScheduled": 2,
                  "numberMisscheduled": 0, "numberReady": 2}),
        ):  # fmt: skip
            generation = obj and obj["metadata"].get("generation")
            if (
                obj is not None
                and (obj.get("status") or {}).get("observedGeneration") != generation
            ):
                obj["status"] = {"observedGeneration": generation, **status}
                api.put(obj)


@pytest.fixture
def two_clusters(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, KubeApiDouble]]:
    stop = threading.Event()
    with KubeApiThread() as one, KubeApiThread() as two:
        files = [
            api.write_kubeconfig(in_tmp / f"kube-{name}", context=name, cluster=name)
            for name, api in (("cell-1", one), ("cell-2", two))
        ]
        monkeypatch.setenv("KUBECONFIG", ":".join(str(f) for f in files))
        helpers = [
            threading.Thread(target=_mark_ready_when_applied, args=(api, stop), daemon=True)
            for api in (one, two)
        ]
        for helper in helpers:
            helper.start()
        try:
            yield {"cell-1": one, "cell-2": two}
        finally:
            stop.set()
            for helper in helpers:
                helper.join()


def test_the_walk_through_installs_both_cells_as_written(
    two_clusters: dict[str, KubeApiDouble],
) -> None:
    runner = CliRunner()
    ran = []
    for args in doc_commands():
        if args[0] not in ("ca", "install", "uninstall"):
            continue  # needs a running mesh: tests/lab/test_lab_kube.py
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, f"meshctl {shlex.join(args)}:\n{result.output}"
        ran.append(" ".join(args[:2] if args[0] == "ca" else args[:1]))
        if args[0] == "install":
            cell = args[args.index("--kube-context") + 1]
            api = two_clusters[cell]
            service = api.get("v1", "Service", "cellmesh-meshapi", NS)
            assert service is not None
            annotations = service["metadata"]["annotations"]
            assert annotations["service.beta.kubernetes.io/aws-load-balancer-type"] == "nlb"
            assert annotations["service.beta.kubernetes.io/aws-load-balancer-internal"] == "true"
    assert ran == ["ca init", "install", "install", "uninstall"]
    # The walk-through uninstalled cell-2 only.
    assert two_clusters["cell-2"].get("v1", "Namespace", NS) is None
    assert two_clusters["cell-1"].get("apps/v1", "Deployment", "cellmesh-meshapi", NS) is not None
