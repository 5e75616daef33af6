"""``meshctl install`` / ``uninstall`` through the CLI against the Kubernetes API double.

The real ``kubernetes`` client talks HTTP to ``meshctl.lab.kubeapi``; the mesh CA and every
certificate are real. Nothing here runs pods: the tests set Deployment/DaemonSet status in the
double the way the controllers would.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from certs import CA_KEY_FILE, Role, describe_certificate, identity_from_certificate, verify_chain
from certs.pemfiles import parse_certificate
from meshctl.cli import cli
from meshctl.kube.render import APPLY_ORDER
from meshctl.lab.kubeapi import KubeApiDouble, KubeApiThread
from tests.conftest import Pki

NS = "cellmesh"
EXPECTED = {
    ("Namespace", None, "cellmesh"),
    ("ServiceAccount", NS, "cellmesh-meshapi"),
    ("ServiceAccount", NS, "cellmesh-agent"),
    ("ClusterRole", None, "cellmesh-meshapi"),
    ("ClusterRoleBinding", None, "cellmesh-meshapi"),
    ("Role", NS, "cellmesh-meshapi"),
    ("RoleBinding", NS, "cellmesh-meshapi"),
    ("ConfigMap", NS, "cellmesh-config"),
    ("Secret", NS, "cellmesh-meshapi-tls"),
    ("Secret", NS, "cellmesh-agent-tls"),
    ("Service", NS, "cellmesh-meshapi"),
    ("Deployment", NS, "cellmesh-meshapi"),
    ("DaemonSet", NS, "cellmesh-agent"),
    ("PodDisruptionBudget", NS, "cellmesh-meshapi"),
}


def meshctl(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(
        cli, ["--config", str(tmp_path / "meshctl" / "config.yaml"), *args], env=env
    )


def install(tmp_path: Path, kubeconfig: Path, pki: Pki, *extra: str) -> Result:
    return meshctl(
        tmp_path,
        "install",
        "--kubeconfig",
        str(kubeconfig),
        "--kube-context",
        "cell-1",
        "--cell",
        "cell-1",
        "--cell-id",
        "1",
        "--pod-cidr",
        "10.1.0.0/16",
        "--ca",
        str(pki.ca_dir),
        *extra,
    )


def ours(api: KubeApiDouble) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    """Every object labelled part-of=cellmesh (and the namespace), by (kind, namespace, name)."""
    found: dict[tuple[str, str | None, str], dict[str, Any]] = {}
    for api_version, kind in APPLY_ORDER:
        for obj in api.list(api_version, kind):
            meta = obj["metadata"]
            labels = meta.get("labels") or {}
            if labels.get("app.kubernetes.io/part-of") == "cellmesh":
                found[(kind, meta.get("namespace"), meta["name"])] = obj
    return found


def secret_file(api: KubeApiDouble, name: str, key: str) -> bytes:
    secret = api.get("v1", "Secret", name, NS)
    assert secret is not None, name
    return base64.b64decode(secret["data"][key])


def test_install_creates_every_object_and_a_second_run_changes_nothing(
    api: KubeApiDouble, kubeconfig: Path, pki: Pki, tmp_path: Path
) -> None:
    first = install(tmp_path, kubeconfig, pki)
    assert first.exit_code == 0, first.output
    created = ours(api)
    assert set(created) == EXPECTED
    config = created[("ConfigMap", NS, "cellmesh-config")]["data"]
    assert config == {"cell": "cell-1", "cell-id": "1", "pod-cidr": "10.1.0.0/16"}

    ca_key = (pki.ca_dir / CA_KEY_FILE).read_bytes()
    for name, role in (("cellmesh-meshapi-tls", Role.MESHAPI), ("cellmesh-agent-tls", Role.AGENT)):
        cert = parse_certificate(secret_file(api, name, "tls.crt"), source=name)
        identity = identity_from_certificate(cert)
        assert (identity.cell, identity.role) == ("cell-1", role)
        verify_chain(leaf=cert, bundle=pki.ca_dir / "ca.crt")
        for key in ("ca.crt", "tls.crt", "tls.key"):
            assert ca_key not in secret_file(api, name, key)
    meshapi_cert = parse_certificate(secret_file(api, "cellmesh-meshapi-tls", "tls.crt"), source="")
    assert "cellmesh-meshapi.cellmesh.svc" in str(meshapi_cert.extensions)
    admin = tmp_path / "meshctl" / "kube" / "cell-1" / "admin"
    admin_identity = identity_from_certificate((admin / "tls.crt").read_bytes())
    assert (admin_identity.cell, admin_identity.role) == ("cell-1", Role.ADMIN)
    admin_before = {p.name: p.read_bytes() for p in admin.iterdir()}

    second = install(tmp_path, kubeconfig, pki, "-o", "json")
    assert second.exit_code == 0, second.output
    report = json.loads(second.output)
    assert {o["action"] for o in report["objects"]} == {"unchanged"}
    assert report["admin_certificate"] == "kept"
    after = ours(api)
    assert {k: o["metadata"]["resourceVersion"] for k, o in after.items()} == {
        k: o["metadata"]["resourceVersion"] for k, o in created.items()
    }
    assert {p.name: p.read_bytes() for p in admin.iterdir()} == admin_before


def test_a_secret_for_another_cell_is_reissued(
    api: KubeApiDouble, kubeconfig: Path, pki: Pki, tmp_path: Path
) -> None:
    assert install(tmp_path, kubeconfig, pki).exit_code == 0
    foreign = pki.tls("cell-9", Role.AGENT)
    api.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "cellmesh-agent-tls", "namespace": NS},
            "type": "kubernetes.io/tls",
            "data": {
                k: base64.b64encode((foreign / k).read_bytes()).decode()
                for k in ("ca.crt", "tls.crt", "tls.key")
            },
        }
    )
    result = install(tmp_path, kubeconfig, pki, "-o", "json")
    assert result.exit_code == 0, result.output
    actions = {(o["kind"], o["name"]): o for o in json.loads(result.output)["objects"]}
    agent = actions[("Secret", "cellmesh-agent-tls")]
    assert agent["action"] == "configured"
    assert "cell-9" in agent["note"]
    assert actions[("Secret", "cellmesh-meshapi-tls")]["action"] == "unchanged"
    identity = identity_from_certificate(secret_file(api, "cellmesh-agent-tls", "tls.crt"))
    assert identity.cell == "cell-1"


def test_meshapi_san_reissues_once_then_keeps(
    api: KubeApiDouble, kubeconfig: Path, pki: Pki, tmp_path: Path
) -> None:
    assert install(tmp_path, kubeconfig, pki).exit_code == 0
    sans = ("--meshapi-san", "NLB.example.com", "--meshapi-san", "10.0.0.5", "-o", "json")
    first = install(tmp_path, kubeconfig, pki, *sans)
    assert first.exit_code == 0, first.output
    actions = {(o["kind"], o["name"]): o for o in json.loads(first.output)["objects"]}
    meshapi = actions[("Secret", "cellmesh-meshapi-tls")]
    assert meshapi["action"] == "configured"
    assert "SANs differ" in meshapi["note"]
    info = describe_certificate(
        parse_certificate(secret_file(api, "cellmesh-meshapi-tls", "tls.crt"), source=""),
        path=Path("tls.crt"),
    )
    assert "nlb.example.com" in info.dns_names
    assert info.ip_addresses == ("127.0.0.1", "10.0.0.5")
    again = install(tmp_path, kubeconfig, pki, *sans)
    assert {o["action"] for o in json.loads(again.output)["objects"]} == {"unchanged"}
    bad = install(tmp_path, kubeconfig, pki, "--meshapi-san", "not a name")
    assert bad.exit_code == 2
    assert "Invalid value for '--meshapi-san'" in bad.output


def test_ca_from_context_signs_in_memory_and_never_ships_the_key(pki: Pki, tmp_path: Path) -> None:
    with KubeApiThread() as owner, KubeApiThread() as target:
        owner_config = owner.write_kubeconfig(
            tmp_path / "owner", context="cell-1", cluster="cell-1"
        )
        target_config = target.write_kubeconfig(
            tmp_path / "target", context="cell-2", cluster="cell-2"
        )
        owner.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        owner.put(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "cellmesh-ca", "namespace": NS},
                "data": {
                    k: base64.b64encode((pki.ca_dir / k).read_bytes()).decode()
                    for k in ("ca.crt", "ca.key")
                },
            }
        )
        args = [
            "install",
            "--kube-context",
            "cell-2",
            "--cell",
            "cell-2",
            "--cell-id",
            "2",
            "--pod-cidr",
            "10.2.0.0/16",
            "--ca-from-context",
            "cell-1",
        ]
        env = {"KUBECONFIG": f"{owner_config}:{target_config}"}
        result = meshctl(tmp_path, *args, env=env)
        assert result.exit_code == 0, result.output
        assert set(ours(target)) == {
            (k, ns, n.replace("cell-1", "cell-2")) for k, ns, n in EXPECTED
        }
        assert target.get("v1", "Secret", "cellmesh-ca", NS) is None
        ca_key = (pki.ca_dir / CA_KEY_FILE).read_bytes()
        for name in ("cellmesh-meshapi-tls", "cellmesh-agent-tls"):
            for key in ("ca.crt", "tls.crt", "tls.key"):
                assert ca_key not in secret_file(target, name, key)
            leaf = secret_file(target, name, "tls.crt")
            assert identity_from_certificate(leaf).cell == "cell-2"
            verify_chain(leaf=parse_certificate(leaf, source=name), bundle=pki.ca_dir / "ca.crt")

        owner.delete("v1", "Secret", "cellmesh-ca", NS)
        missing = meshctl(tmp_path, *args, env=env)
        assert missing.exit_code == 1
        assert "Secret cellmesh/cellmesh-ca in kube context cell-1 does not exist" in missing.output


def _set_ready(api: KubeApiDouble, *, agents_ready: int, agents_desired: int) -> None:
    dep = api.get("apps/v1", "Deployment", "cellmesh-meshapi", NS)
    ds = api.get("apps/v1", "DaemonSet", "cellmesh-agent", NS)
    assert dep is not None
    assert ds is not None
    dep["status"] = {
        "observedGeneration": dep["metadata"]["generation"],
        "replicas": 1,
        "readyReplicas": 1,
        "availableReplicas": 1,
    }
    ds["status"] = {
        "observedGeneration": ds["metadata"]["generation"],
        "desiredNumberScheduled": agents_desired,
        "currentNumberScheduled": agents_desired,
        "numberMisscheduled": 0,
        "numberReady": agents_ready,
    }
    api.put(dep)
    api.put(ds)


def test_wait_fails_naming_what_is_not_ready_then_succeeds(
    api: KubeApiDouble, kubeconfig: Path, pki: Pki, tmp_path: Path
) -> None:
    early = install(tmp_path, kubeconfig, pki, "--wait", "--timeout", "0.3")
    assert early.exit_code == 1
    assert "not ready after 0.3 s" in early.output
    assert "Deployment cellmesh/cellmesh-meshapi: generation 1 not observed yet" in early.output
    assert "DaemonSet cellmesh/cellmesh-agent: no agent scheduled" in early.output

    _set_ready(api, agents_ready=1, agents_desired=2)
    partial = install(tmp_path, kubeconfig, pki, "--wait", "--timeout", "0.3")
    assert partial.exit_code == 1
    assert "DaemonSet cellmesh/cellmesh-agent: 1 of 2 agents ready" in partial.output
    assert "Deployment" not in partial.output.split("not ready after")[1]

    _set_ready(api, agents_ready=2, agents_desired=2)
    ready = install(tmp_path, kubeconfig, pki, "--wait", "--timeout", "5", "-o", "json")
    assert ready.exit_code == 0, ready.output
    report = json.loads(ready.output)
    assert report["ready"] is True
    assert report["not_ready"] == []


def test_uninstall_removes_everything_and_is_idempotent(
    api: KubeApiDouble, kubeconfig: Path, pki: Pki, tmp_path: Path
) -> None:
    assert install(tmp_path, kubeconfig, pki).exit_code == 0
    admin = tmp_path / "meshctl" / "kube" / "cell-1" / "admin"
    assert admin.is_dir()
    args = ["uninstall", "--kubeconfig", str(kubeconfig), "--kube-context", "cell-1"]
    first = meshctl(tmp_path, *args, "--wait", "--timeout", "5", "-o", "json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    deleted = {(o["kind"], o["name"]) for o in report["objects"] if o["action"] == "deleted"}
    assert {(k, n) for k, _, n in EXPECTED} <= deleted
    assert report["left"] == []
    assert ours(api) == {}
    assert api.get("v1", "Namespace", NS) is None
    assert not admin.exists()

    again = meshctl(tmp_path, *args)
    assert again.exit_code == 0, again.output
    assert "absent" in again.output


def test_uninstall_keeps_a_namespace_holding_the_mesh_ca(
    api: KubeApiDouble, kubeconfig: Path, pki: Pki, tmp_path: Path
) -> None:
    assert install(tmp_path, kubeconfig, pki).exit_code == 0
    api.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "cellmesh-ca", "namespace": NS},
            "data": {"ca.crt": base64.b64encode((pki.ca_dir / "ca.crt").read_bytes()).decode()},
        }
    )
    result = meshctl(
        tmp_path, "uninstall", "--kubeconfig", str(kubeconfig), "--kube-context", "cell-1"
    )
    assert result.exit_code == 0, result.output
    assert "it holds the mesh CA Secret cellmesh-ca" in result.output
    assert ours(api) == {("Namespace", None, "cellmesh"): api.get("v1", "Namespace", NS)}
    assert api.get("v1", "Secret", "cellmesh-ca", NS) is not None


def test_dry_run_prints_redacted_yaml_and_touches_no_cluster(
    api: KubeApiDouble, kubeconfig: Path, pki: Pki, tmp_path: Path
) -> None:
    before = api.resource_version
    result = install(tmp_path, kubeconfig, pki, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "kind: Deployment" in result.output
    assert "<redacted" in result.output
    assert "PRIVATE KEY" not in result.output
    assert api.resource_version == before
    assert not (tmp_path / "meshctl" / "kube").exists()


@pytest.mark.parametrize(
    ("change", "exit_code", "message"),
    [
        pytest.param(
            {"--kube-context": "nowhere"},
            2,
            "kube context 'nowhere' not found",
            id="unknown-context",
        ),
        pytest.param({"--cell": "Cell_1"}, 2, "Invalid value for '--cell'", id="bad-cell-name"),
        pytest.param({"--cell-id": "0"}, 2, "'--cell-id': 0 is not in the range", id="cell-id-0"),
        pytest.param(
            {"--cell-id": "256"}, 2, "'--cell-id': 256 is not in the range", id="cell-id-256"
        ),
        pytest.param({"--ca": None}, 2, "give exactly one of --ca DIR", id="no-ca"),
        pytest.param({"--ca": "/nonexistent/ca"}, 2, "holds no ca.key", id="missing-ca-dir"),
        pytest.param(
            {"--pod-cidr": "10.1.0.1/16"}, 2, "pod CIDR '10.1.0.1/16' is not a network", id="cidr"
        ),
    ],
)
def test_bad_input_is_named(
    api: KubeApiDouble,
    kubeconfig: Path,
    pki: Pki,
    tmp_path: Path,
    change: dict[str, str | None],
    exit_code: int,
    message: str,
) -> None:
    flags: dict[str, str | None] = {
        "--kubeconfig": str(kubeconfig),
        "--kube-context": "cell-1",
        "--cell": "cell-1",
        "--cell-id": "1",
        "--pod-cidr": "10.1.0.0/16",
        "--ca": str(pki.ca_dir),
    }
    flags.update(change)
    args = [part for flag, value in flags.items() if value is not None for part in (flag, value)]
    result = meshctl(tmp_path, "install", *args)
    assert result.exit_code == exit_code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert ours(api) == {}
