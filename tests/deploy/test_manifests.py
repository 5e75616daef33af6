"""deploy/ renders with ``kubectl kustomize`` and every object validates strictly.

Both example overlays and ``meshctl install --dry-run`` for both cells are checked against the
Kubernetes 1.32 schemas ``kubernetes-validate`` ships (strict: unknown fields are errors), and
the properties the design relies on are asserted on the rendered objects.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from meshctl.cli import cli
from tests.conftest import REPO, Pki

KUBERNETES_VERSION = "1.32"
CELLS = [("cell-1", 1, "10.1.0.0/16"), ("cell-2", 2, "10.2.0.0/16")]
NLB = {
    "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
    "service.beta.kubernetes.io/aws-load-balancer-internal": "true",
    "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled": "true",
}


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is not installed (make setup installs it)"
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


def validate_all(objects: list[dict[str, Any]]) -> None:
    assert objects
    for obj in objects:
        where = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where}: {e.message} at {list(e.path)}")


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [
        o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith("cellmesh")
    ]
    return found


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    spec = obj["spec"]["template"]["spec"]
    (found,) = [
        c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name
    ]
    return found


def test_the_validator_is_strict() -> None:
    bogus = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "dataa": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bogus, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(("cell", "cell_id", "pod_cidr"), CELLS, ids=[c[0] for c in CELLS])
def test_overlay_renders_and_validates(cell: str, cell_id: int, pod_cidr: str) -> None:
    objects = kustomize(REPO / "deploy" / "overlays" / cell)
    validate_all(objects)
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cellmesh"
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "cellmesh"
    config = by_kind(objects, "ConfigMap")
    assert config["data"] == {"cell": cell, "cell-id": str(cell_id), "pod-cidr": pod_cidr}
    service = by_kind(objects, "Service")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"] == [
        {"name": "grpc", "port": 7443, "protocol": "TCP", "targetPort": "grpc"}
    ]
    assert service["metadata"]["annotations"] == NLB


def test_base_design() -> None:
    objects = kustomize(REPO / "deploy" / "overlays" / "cell-1")
    deployment = by_kind(objects, "Deployment")
    meshapi = container(deployment, "meshapi")
    assert meshapi["image"] == f"ghcr.io/cellmesh/cellmesh:{version('cellmesh')}"
    assert "--source=kubernetes" in meshapi["args"]
    assert "--etcd=http://127.0.0.1:2379" in meshapi["args"]
    assert meshapi["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert meshapi["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert meshapi["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    etcd = container(deployment, "etcd")
    assert etcd["image"].startswith("registry.k8s.io/etcd:3.5.")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["etcd-data"] == {"name": "etcd-data", "emptyDir": {}}
    assert volumes["tls"]["secret"]["secretName"] == "cellmesh-meshapi-tls"

    agent_ds = by_kind(objects, "DaemonSet")
    pod = agent_ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    agent = container(agent_ds, "nodeagent")
    assert agent["securityContext"]["privileged"] is True
    assert {"--node-name-from-env=NODE_NAME", "--registration=kubernetes"} <= set(agent["args"])
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "Bidirectional"
    assert "/sys/fs/cgroup" in mounts

    rules = by_kind(objects, "ClusterRole")["rules"]
    assert rules == [
        {
            "apiGroups": [""],
            "resources": ["services", "namespaces", "nodes"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        },
    ]
    role = by_kind(objects, "Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}
    ]
    agent_sa = [
        o
        for o in objects
        if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "cellmesh-agent"
    ]
    assert agent_sa[0]["automountServiceAccountToken"] is False
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert all(s["name"] == "cellmesh-meshapi" for b in bindings for s in b["subjects"])
    assert by_kind(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize(("cell", "cell_id", "pod_cidr"), CELLS, ids=[c[0] for c in CELLS])
def test_install_dry_run_validates(
    cell: str, cell_id: int, pod_cidr: str, pki: Pki, tmp_path: Path
) -> None:
    annotations = [
        part for key, value in NLB.items() for part in ("--service-annotation", f"{key}={value}")
    ]
    result = CliRunner().invoke(
        cli,
        [
            "--config",
            str(tmp_path / "config.yaml"),
            "install",
            "--kube-context",
            cell,
            "--cell",
            cell,
            "--cell-id",
            str(cell_id),
            "--pod-cidr",
            pod_cidr,
            "--ca",
            str(pki.ca_dir),
            *annotations,
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    objects = [d for d in yaml.safe_load_all(result.output) if d is not None]
    validate_all(objects)
    overlay = kustomize(REPO / "deploy" / "overlays" / cell)
    secrets = [o for o in objects if o["kind"] == "Secret"]
    # The same objects as `kubectl kustomize deploy/overlays/<cell>`, plus the two TLS Secrets.
    assert {(o["kind"], o["metadata"]["name"]): o for o in objects if o["kind"] != "Secret"} == {
        (o["kind"], o["metadata"]["name"]): o for o in overlay
    }
    assert sorted(s["metadata"]["name"] for s in secrets) == [
        "cellmesh-agent-tls",
        "cellmesh-meshapi-tls",
    ]
    assert all("data" not in s for s in secrets)


def test_install_dry_run_with_two_pod_cidrs(pki: Pki, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "--config",
            str(tmp_path / "config.yaml"),
            "install",
            "--kube-context",
            "c",
            "--cell",
            "cell-3",
            "--cell-id",
            "3",
            "--pod-cidr",
            "10.3.0.0/16",
            "--pod-cidr",
            "fd00:3::/64",
            "--ca",
            str(pki.ca_dir),
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    objects = [d for d in yaml.safe_load_all(result.output) if d is not None]
    validate_all(objects)
    args = container(by_kind(objects, "Deployment"), "meshapi")["args"]
    assert args.count("--pod-cidr=$(CELLMESH_POD_CIDR)") == 1
    assert args[-1] == "--pod-cidr=fd00:3::/64"


def test_rendered_args_parse_with_the_real_commands(tmp_path: Path) -> None:
    """The containers' args (``$(VAR)`` expanded as the kubelet does) are flags meshapi and
    nodeagent accept: the manifests cannot drift from the commands unnoticed."""
    import meshapi.main
    import nodeagent.main

    objects = kustomize(REPO / "deploy" / "overlays" / "cell-2")
    env = {
        "CELLMESH_CELL": "cell-2",
        "CELLMESH_CELL_ID": "2",
        "CELLMESH_POD_CIDR": "10.2.0.0/16",
        "NODE_NAME": "node-a",
    }

    def expanded(arg: str) -> str:
        arg = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)
        # Paths that must exist on a node: a directory of the test's instead.
        return arg.replace("/etc/cellmesh/tls", str(tmp_path)).replace(
            "/sys/fs/cgroup", str(tmp_path)
        )

    commands = {"meshapi": meshapi.main.main, "nodeagent": nodeagent.main.main}
    parsed = {}
    for kind, name in (("Deployment", "meshapi"), ("DaemonSet", "nodeagent")):
        spec = container(by_kind(objects, kind), name)
        (command,) = spec["command"]
        parsed[command] = (
            commands[command].make_context(command, [expanded(a) for a in spec["args"]]).params
        )
    assert parsed["meshapi"]["source"] == "kubernetes"
    assert (parsed["meshapi"]["cell"], parsed["meshapi"]["cell_id"]) == ("cell-2", 2)
    assert parsed["meshapi"]["pod_cidrs"] == ("10.2.0.0/16",)
    assert parsed["nodeagent"]["cell"] == "cell-2"
    assert parsed["nodeagent"]["registration"] == "kubernetes"
    assert parsed["nodeagent"]["node_env"] == "NODE_NAME"
