"""Faults under steady cross-cell traffic on a real lab: not one request may fail.

A 2 cells x 2 nodes lab, connected; two global services whose only backend lives in the *other*
cell (``to-beta`` backed in beta, called from alpha; ``to-alpha`` backed in alpha, called from
beta), so every request crosses cells. While a client loop runs in each cell, one fault at a time,
driven through the operator's commands (``meshctl lab stop|start``):

- the peer's meshapi is killed (SIGKILL) and started again 10 s later: no failed request, and the
  agents of the other cell are ready again within 1 s of the meshapi's ``/readyz``;
- a node agent is killed and started again 5 s later: no failed request;
- a cell's etcd is killed and wiped: no failed request; the cell reports what only an operator
  had written as lost, with the commands that restore it, and running them changes nothing.

After each, every node's BPF maps equal their dump from before (``bpftool map dump``).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bpf.layout import BACKENDS_MAP, REVERSE_NAT_MAP, SERVICES_MAP
from e2e.checks import Target
from e2e.driver import Pod
from e2e.environment import Environment, MeshAdmin, ServiceSpec, service_manifest
from e2e.probe import Observation, Prober
from meshctl.lab import LabDriver
from tests.lab.conftest import Lab, connected_lab, wait_for

pytestmark = pytest.mark.timeout(600)


@dataclass
class Mesh:
    """The lab, its driver and suite environment, and the two cross-cell targets."""

    lab: Lab
    driver: LabDriver
    env: Environment
    clients: dict[str, Pod] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)  # client cell -> target
    manifests: dict[str, list[str]] = field(default_factory=dict)  # cell -> applied manifests


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.loads(resp.read())


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with connected_lab(tmp_path_factory.mktemp("faults")) as made:
        driver = LabDriver(made.name, made.config)
        env = Environment(driver, MeshAdmin(driver), "alpha", "beta")
        found = Mesh(made, driver, env)
        try:
            for client_cell, backend_cell in (("alpha", "beta"), ("beta", "alpha")):
                name = f"to-{backend_cell}"
                specs = {"alpha": ServiceSpec(), "beta": ServiceSpec()}
                vips = env.service(name, specs)
                for cell, spec in specs.items():
                    found.manifests.setdefault(cell, []).append(
                        service_manifest(name, vips[cell], spec)
                    )
                env.backend(backend_cell, f"{name}-0", name, node="node1")
                found.clients[client_cell] = env.client(client_cell)
                found.targets[client_cell] = Target.service(name, vips[client_cell])
            for cell in ("alpha", "beta"):
                ready = made.meshctl("status", "--context", f"{made.name}-{cell}", "--wait")
                assert ready.returncode == 0, ready.stdout + ready.stderr
            prober = Prober(driver)
            for cell, client in found.clients.items():
                target = found.targets[cell]
                wait_for(
                    f"{cell}'s client to reach {target.label}",
                    lambda c=client, t=target: (
                        prober.probe(c, "tcp", t.host, t.port, count=3).failures == 0
                    ),
                    timeout=60,
                )
            yield found
        finally:
            errors = env.end_suite()
            assert not errors, errors


# The maps the agent programs; the reverse socket map holds the live connections' entries.
PROGRAMMED_MAPS = (SERVICES_MAP, BACKENDS_MAP, REVERSE_NAT_MAP)


def map_dumps(lab: Lab) -> dict[str, Any]:
    """Every node's programmed LB maps as bpftool reads them."""
    dumps: dict[str, Any] = {}
    for cell in lab.status()["cells"]:
        for node in cell["nodes"]:
            maps = Path(node["pin_dir"]) / "maps"
            for name in PROGRAMMED_MAPS:
                done = subprocess.run(
                    ["bpftool", "map", "dump", "pinned", str(maps / name), "-j"],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                entries = json.loads(done.stdout or "[]")
                dumps[f"{cell['name']}/{node['name']}/{name}"] = sorted(
                    entries, key=lambda e: json.dumps(e, sort_keys=True)
                )
    return dumps


class Traffic:
    """A client loop in every cell, each to the service backed only in the other cell."""

    def __init__(self, mesh: Mesh, duration: float) -> None:
        self.prober = Prober(mesh.driver)
        self.results: dict[str, Observation | BaseException] = {}
        self.targets = list(mesh.targets.values())
        self.threads = [
            threading.Thread(target=self._loop, args=(cell, client, mesh.targets[cell], duration))
            for cell, client in mesh.clients.items()
        ]

    def _loop(self, cell: str, client: Pod, target: Target, duration: float) -> None:
        try:
            self.results[cell] = self.prober.probe(
                client, "tcp", target.host, target.port, interval=0.05, duration=duration
            )
        except BaseException as e:  # handed to the test's thread
            self.results[cell] = e

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        wait_for("the client loops to run", self._running)  # before the fault, not after
        return self

    def _running(self) -> bool:
        """Every cell's client process runs (it is `python -m e2e.client tcp HOST PORT ...`)."""
        for target in self.targets:
            pattern = f"e2e.client tcp {target.host} {target.port} "
            if subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode != 0:
                return False
        return True

    def __exit__(self, *exc: object) -> None:
        for t in self.threads:
            t.join()

    def check(self) -> None:
        for cell, result in sorted(self.results.items()):
            assert not isinstance(result, BaseException), f"client loop in {cell}: {result}"
            assert result.answered > 50, f"client loop in {cell}: {result.describe()}"
            assert result.failures == 0, f"client loop in {cell}: {result.describe()}"
        assert len(self.results) == len(self.threads)


def _component(lab: Lab, verb: str, target: str, *args: str) -> None:
    done = lab.lab(verb, target, *args)
    assert done.returncode == 0, f"lab {verb} {target} {args}: {done.stdout}{done.stderr}"


def _peer_ready_everywhere(lab: Lab, cell: str, peer: str) -> bool:
    for node in next(c for c in lab.status()["cells"] if c["name"] == cell)["nodes"]:
        doc = _get_json(f"http://{node['agent']['http']}/status")
        if doc["peers"].get(peer, {}).get("state") != "ready":
            return False
    return True


def test_peer_meshapi_killed_for_10s(mesh: Mesh) -> None:
    lab = mesh.lab
    before = map_dumps(lab)
    beta = next(c for c in lab.status()["cells"] if c["name"] == "beta")
    agents = [n["agent"]["http"] for c in lab.status()["cells"] if c["name"] == "alpha"
              for n in c["nodes"]]  # fmt: skip
    readyz = f"http://{beta['meshapi']['http']}/readyz"
    with Traffic(mesh, duration=20.0) as traffic:
        _component(lab, "stop", "beta", "--component", "meshapi", "--signal", "KILL")
        wait_for("alpha's agents to see beta stale", lambda: not _peer_ready_everywhere(
            lab, "alpha", "beta"))  # fmt: skip
        time.sleep(10.0)  # the outage itself, as the issue prescribes
        green: list[float] = []
        synced: dict[str, float] = {}

        def watch() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (not green or len(synced) < len(agents)):
                now = time.monotonic()
                if not green and _http_ok(readyz):
                    green.append(now)
                for http in agents:
                    if http not in synced:
                        doc = _get_json(f"http://{http}/status")
                        if doc["peers"].get("beta", {}).get("state") == "ready":
                            synced[http] = time.monotonic()
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        _component(lab, "start", "beta", "--component", "meshapi")
        watcher.join()
    traffic.check()
    assert green, "beta's meshapi never became ready"
    assert len(synced) == len(agents), f"agents not ready again: {set(agents) - set(synced)}"
    lag = max(synced.values()) - green[0]
    assert lag <= 1.0, f"resync took {lag:.2f}s after beta's /readyz was green"
    assert map_dumps(lab) == before


def test_node_agent_killed_for_5s(mesh: Mesh) -> None:
    lab = mesh.lab
    client = mesh.clients["alpha"]
    before = map_dumps(lab)
    with Traffic(mesh, duration=12.0) as traffic:
        target = f"{client.cell}/{client.node}"
        _component(lab, "stop", target, "--component", "agent", "--signal", "KILL")
        time.sleep(5.0)  # the agent's outage, as the issue prescribes
        _component(lab, "start", target, "--component", "agent")
        wait_for("the agent to be ready", lambda: lab.status()["healthy"])
    traffic.check()
    assert map_dumps(lab) == before


def test_etcd_wiped(mesh: Mesh) -> None:
    lab = mesh.lab
    before = map_dumps(lab)
    with Traffic(mesh, duration=20.0) as traffic:
        _component(lab, "stop", "beta", "--component", "etcd", "--signal", "KILL", "--wipe")
        _component(lab, "start", "beta", "--component", "etcd")
        wait_for("beta's meshapi to be ready", lambda: lab.status()["healthy"], timeout=60)
    traffic.check()
    assert map_dumps(lab) == before
    lost = _lost(lab, "beta")
    assert {(r["kind"], r["name"]) for r in lost} == {
        ("services", "cellmesh-test/to-alpha"),
        ("services", "cellmesh-test/to-beta"),
        ("peers", "alpha"),
    }, lost
    # The operator restores what the status names; the datapath does not change.
    with Traffic(mesh, duration=10.0) as traffic:
        for manifest in mesh.manifests["beta"]:
            mesh.env.admin.apply("beta", manifest)
        peer = next(r for r in lost if r["kind"] == "peers")
        # The command names cells; the lab's contexts are named <lab>-<cell>.
        argv = shlex.split(
            peer["restore"]
            .replace("--context ", f"--context {lab.name}-")
            .replace("--destination-context ", f"--destination-context {lab.name}-")
        )
        assert argv[:2] == ["meshctl", "connect"], peer
        done = lab.meshctl(*argv[1:])
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for("nothing lost in beta", lambda: not _lost(lab, "beta"))
    traffic.check()
    assert map_dumps(lab) == before


def _lost(lab: Lab, cell: str) -> list[dict[str, Any]]:
    done = lab.meshctl("status", "--context", f"{lab.name}-{cell}", "-o", "json")
    lost: list[dict[str, Any]] = json.loads(done.stdout)["recovery"]["lost"]
    return lost
