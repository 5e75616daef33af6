"""One real lab fed through Kubernetes: ``meshctl lab up --source kubernetes`` (2 cells x 2 nodes).

Each cell gets its own Kubernetes API double (a lab process); the lab writes its nodes, the
meshapi Service (LoadBalancer ingress = meshapi's lab address), the demo Service and the echo
pods' EndpointSlices there with the real client; each meshapi watches its double (``--source
kubernetes``) and the agents run as a DaemonSet runs them. Checked: the objects arrive as the
cells' records, ``meshctl connect --kube-context`` finds and joins the cells, pods reach pods and
the demo service, a change to an EndpointSlice reaches meshapi, the pod runtime of the
Kubernetes driver realises pods, and ``lab down`` removes the doubles too — also after one was
killed and the state file lost. Traffic goes only to addresses inside the lab's namespaces.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.driver import PortSpec
from e2e.environment import NAMESPACE
from e2e.suite import TESTS
from meshcore.client import MeshClient
from meshcore.model import Endpoint, Kind, Node, Service
from meshctl.kube.client import KubeClient
from meshctl.lab.kuberuntime import LabPodRuntime, find_lab_for_context
from tests.lab.conftest import MESHCTL, Lab, cleaned_up, new_lab, pid_alive, wait_for

DEMO_VIP = "10.96.0.10"
NODES = {  # per cell: node -> (InternalIP, pod CIDR, echo pod address)
    "alpha": {
        "node0": ("192.168.1.10", "10.1.1.0/24", "10.1.1.10"),
        "node1": ("192.168.1.11", "10.1.2.0/24", "10.1.2.10"),
    },
    "beta": {
        "node0": ("192.168.2.10", "10.2.1.0/24", "10.2.1.10"),
        "node1": ("192.168.2.11", "10.2.2.0/24", "10.2.2.10"),
    },
}


@pytest.fixture(scope="module")
def kube_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = new_lab(tmp_path_factory.mktemp("labkube"))
    with cleaned_up([lab]):
        done = lab.lab(
            "up", "--source", "kubernetes", "--cells", "2", "--nodes", "2",
            "--pods-per-node", "1", "--wait",
        )  # fmt: skip
        lab.outputs["up"] = done
        assert done.returncode == 0, done.stderr
        yield lab


def _state(lab: Lab) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Path(f"/run/cellmesh/lab/{lab.name}/state.json").read_text())
    return doc


def _kube(lab: Lab, cell: str) -> KubeClient:
    return KubeClient.from_context(f"{lab.name}-{cell}", kubeconfig=Path(_state(lab)["kubeconfig"]))


def _records(lab: Lab, cell: str, kind: Kind) -> list[Any]:
    found = next(c for c in _state(lab)["cells"] if c["name"] == cell)

    async def listed() -> list[Any]:
        async with MeshClient(found["meshapi"], Path(found["admin_tls"])) as admin:
            records, _ = await admin.list([kind])
        return [record for _, record in records]

    return asyncio.run(listed())


def _by_name(records: list[Any]) -> list[Any]:
    return sorted(records, key=lambda record: str(record.name))


def test_up_runs_an_api_double_per_cell_and_in_cluster_agents(kube_lab: Lab) -> None:
    done = kube_lab.outputs["up"]
    for step in ("etcd (2)", "Kubernetes API doubles (2)", "Kubernetes objects", "meshapi (2)",
                 "node agents (4)", "every meshapi and agent ready"):  # fmt: skip
        assert f"[lab {kube_lab.name}] {step}" in done.stderr, done.stderr
    assert "Source kubernetes; kubeconfig" in done.stdout
    doc = kube_lab.status()
    assert (doc["source"], doc["healthy"]) == ("kubernetes", True)
    assert doc["kubeconfig"] == f"/run/cellmesh/lab/{kube_lab.name}/kubeconfig"
    for cell in doc["cells"]:
        kubeapi = cell["kubeapi"]
        assert (kubeapi["state"], kubeapi["alive"], kubeapi["healthy"]) == ("running", True, True)
        assert cell["meshapi"]["ready"]
        assert cell["etcd"]["healthy"]  # the standalone keys stay
    state = _state(kube_lab)
    for cell in state["cells"]:
        assert cell["meshapi_process"]["argv"][-6:] == [
            "--source", "kubernetes", "--kubeconfig", cell["kubeconfig"],
            "--kube-namespace", "cellmesh",
        ]  # fmt: skip
        for node in cell["nodes"]:
            argv, env = node["agent"]["argv"], node["agent"]["env"]
            assert argv[-4:] == [
                "--node-name-from-env",
                "NODE_NAME",
                "--registration",
                "kubernetes",
            ]
            assert "--node-address" not in argv
            assert env == {"NODE_NAME": node["name"]}
    # One kubeconfig, a context per cell named like its meshctl context; admin access for
    # meshctl's --kube-context next to the contexts file.
    for cell in ("alpha", "beta"):
        with _kube(kube_lab, cell) as api:
            assert api.context == f"{kube_lab.name}-{cell}"
        admin = kube_lab.config.parent / "kube" / f"{kube_lab.name}-{cell}" / "admin"
        assert (admin / "tls.crt").is_file()


def test_kubernetes_objects_become_the_cells_records(kube_lab: Lab) -> None:
    for cell, nodes in NODES.items():
        with _kube(kube_lab, cell) as api:
            service = api.get("v1", "Service", "cellmesh-meshapi", "cellmesh")
            slices = api.list("discovery.k8s.io/v1", "EndpointSlice", "demo",
                              label_selector="kubernetes.io/service-name=echo")  # fmt: skip
            demo = api.get("v1", "Service", "echo", "demo")
        assert service is not None
        assert demo is not None
        address = next(c for c in _state(kube_lab)["cells"] if c["name"] == cell)["meshapi"]
        host, _, port = address.rpartition(":")
        assert service["spec"]["type"] == "LoadBalancer"
        assert service["spec"]["ports"][0]["name"] == "grpc"
        assert service["spec"]["ports"][0]["port"] == int(port)
        assert service["status"]["loadBalancer"]["ingress"][0]["ip"] == host
        assert demo["metadata"]["annotations"]["service.cilium.io/global"] == "true"
        assert sorted(e["nodeName"] for s in slices for e in s["endpoints"]) == sorted(nodes)

        want_nodes = [
            Node(cell=cell, name=name, addresses=[ip], pod_cidrs=[cidr])
            for name, (ip, cidr, _) in sorted(nodes.items())
        ]
        assert _by_name(_records(kube_lab, cell, Kind.NODE)) == want_nodes
        endpoints = {e.address.exploded: e for e in _records(kube_lab, cell, Kind.ENDPOINT)}
        assert {a: e.node for a, e in endpoints.items()} == {
            pod: name for name, (_, _, pod) in nodes.items()
        }
        ep: Endpoint = next(iter(endpoints.values()))
        assert (ep.namespace, ep.service, ep.ready) == ("demo", "echo", True)
        assert {(p.name, p.port, p.protocol) for p in ep.ports} == {
            ("http", 8080, "TCP"), ("udp", 8080, "UDP"),
        }  # fmt: skip
        # The in-cluster agents still report their status (meshapi takes those writes).
        reports = {a.node: a.ready for a in _records(kube_lab, cell, Kind.AGENT)}
        assert reports == dict.fromkeys(nodes, True)
        services = [s for s in _records(kube_lab, cell, Kind.SERVICE) if isinstance(s, Service)]
        echo = next(s for s in services if (s.namespace, s.name) == ("demo", "echo"))
        assert echo.global_
        assert {f.vip.exploded for f in echo.frontends} == {DEMO_VIP}


def test_cells_connect_by_kube_context_and_serve_the_demo_service(kube_lab: Lab) -> None:
    # As docs/kubernetes.md does it: the lab's kubeconfig, connect, status --wait.
    kubeconfig = _state(kube_lab)["kubeconfig"]
    assert kubeconfig == f"/run/cellmesh/lab/{kube_lab.name}/kubeconfig"
    env = {"KUBECONFIG": kubeconfig}
    connect = kube_lab.meshctl(
        "connect", "--kube-context", f"{kube_lab.name}-alpha",
        "--destination-kube-context", f"{kube_lab.name}-beta", extra_env=env,
    )  # fmt: skip
    assert connect.returncode == 0, connect.stderr
    ready = kube_lab.meshctl(
        "status", "--kube-context", f"{kube_lab.name}-alpha", "--wait", extra_env=env
    )
    assert ready.returncode == 0, ready.stdout + ready.stderr
    # Routes from the Node objects: the other node of the cell, and the peer's nodes.
    assert kube_lab.reach("alpha/node0/echo-0-0", "10.1.2.10", "tcp") == "alpha node1 echo-1-0"
    assert kube_lab.reach("alpha/node0/echo-0-0", "10.2.2.10", "udp") == "beta node1 echo-1-0"
    # The demo Service's VIP, rewritten by the socket LB to a backend of either cell.
    reply = kube_lab.reach("beta/node0/echo-0-0", DEMO_VIP, "tcp")
    assert reply.split()[2].startswith("echo-"), reply

    # An EndpointSlice change made through the API reaches beta's meshapi (the whole object
    # applied again by its field manager, only the conditions changed).
    with _kube(kube_lab, "beta") as api:
        slice_ = api.get("discovery.k8s.io/v1", "EndpointSlice", "echo-node1", "demo")
        assert slice_ is not None
        meta = {k: slice_["metadata"][k] for k in ("name", "namespace", "labels")}
        endpoints = slice_["endpoints"]
        endpoints[0]["conditions"] = {"ready": False, "serving": False, "terminating": False}
        api.apply(
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta,
             "addressType": "IPv4", "endpoints": endpoints, "ports": slice_["ports"]},
            field_manager="meshctl-lab",
        )  # fmt: skip

    def not_ready() -> bool:
        found = [e for e in _records(kube_lab, "beta", Kind.ENDPOINT) if e.node == "node1"]
        return len(found) == 1 and not found[0].ready

    wait_for("beta's node1 endpoint not ready", not_ready)


def test_the_connectivity_suite_passes_through_the_kubernetes_driver(kube_lab: Lab) -> None:
    """Kubernetes objects -> meshapi -> agents -> BPF maps -> packets, as in a cluster: every
    test of the suite, the disruptive ones included (meshapi stopped, agents restarted)."""
    done = kube_lab.meshctl(
        "connectivity", "test", "--multi-cluster", "--kube-context", f"{kube_lab.name}-alpha",
        "--destination-kube-context", f"{kube_lab.name}-beta", "--include-disruptive",
        "-o", "json", timeout=300,
    )  # fmt: skip
    doc = json.loads(done.stdout)
    results = {r["name"]: (r["result"], r["detail"]) for r in doc["results"]}
    assert results == {case.name: ("passed", results[case.name][1]) for case in TESTS}
    assert done.returncode == 0, done.stderr
    assert doc["summary"] == {"passed": len(TESTS), "failed": 0, "skipped": 0}
    assert doc["cleanup_errors"] == []
    # It removed what it made: its namespace in both cells, its pods.
    for cell in ("alpha", "beta"):
        with _kube(kube_lab, cell) as api:
            names = {n["metadata"]["name"] for n in api.list("v1", "Namespace")}
        assert NAMESPACE not in names
    pods = [p["name"] for c in kube_lab.status()["cells"] for n in c["nodes"] for p in n["pods"]]
    assert sorted(pods) == ["echo-0-0", "echo-0-0", "echo-1-0", "echo-1-0"]


def test_pod_runtime_realises_pods_for_the_kubernetes_driver(kube_lab: Lab) -> None:
    assert find_lab_for_context(f"{kube_lab.name}-beta") == kube_lab.name
    runtime = LabPodRuntime(kube_lab.name, kube_lab.config)
    assert runtime.cells() == ["alpha", "beta"]
    assert runtime.nodes("beta") == ["node0", "node1"]
    assert runtime.kube_context("beta") == f"{kube_lab.name}-beta"
    assert runtime.kubeconfig() == Path(_state(kube_lab)["kubeconfig"])
    address = runtime.run_pod("beta", "node0", "kpod", [PortSpec("http", 8080)])
    kube_lab.remember()
    assert address == "10.2.1.11"
    assert kube_lab.reach("beta/node1/echo-1-0", address, "tcp") == "beta node0 kpod"
    ran = runtime.exec("beta", "node0", "kpod", [runtime.python(), "-c", "print('in pod')"])
    assert (ran.returncode, ran.stdout) == (0, "in pod\n")
    runtime.remove_pod("beta", "node0", "kpod")
    runtime.remove_pod("beta", "node0", "kpod")  # idempotent
    pods = next(c for c in kube_lab.status()["cells"] if c["name"] == "beta")["nodes"][0]["pods"]
    assert [p["name"] for p in pods] == ["echo-0-0"]


def test_down_removes_the_api_doubles_after_one_was_killed_and_the_state_lost(
    kube_lab: Lab,
) -> None:
    doubles = {
        cell["name"]: (cell["kubeapi_process"]["pid"], cell["kubeapi_process"]["starttime"])
        for cell in _state(kube_lab)["cells"]
    }
    pid, starttime = doubles["alpha"]
    assert pid_alive(pid, starttime)
    os.kill(pid, signal.SIGKILL)  # the lab's own process, by its recorded pid and start time
    wait_for("alpha's double gone", lambda: not pid_alive(pid, starttime))
    doc = kube_lab.status()
    alpha = doc["cells"][0]["kubeapi"]
    assert (alpha["state"], alpha["healthy"], doc["healthy"]) == ("exited", False, False)
    shown = kube_lab.lab("status")
    assert f"alpha {alpha['address']} pid {pid} (exited) (NOT serving)" in shown.stdout

    # Started again, the double is empty: the lab writes its objects into it again.
    started = kube_lab.lab("start", "alpha", "--component", "kubeapi")
    assert started.returncode == 0, started.stderr
    assert "lab objects written again into the API double of alpha" in started.stdout
    with _kube(kube_lab, "alpha") as api:
        assert sorted(n["metadata"]["name"] for n in api.list("v1", "Node")) == ["node0", "node1"]
    process = next(c for c in _state(kube_lab)["cells"] if c["name"] == "alpha")["kubeapi_process"]
    doubles["alpha-restarted"] = (process["pid"], process["starttime"])
    os.kill(process["pid"], signal.SIGKILL)  # and killed again: down must cope

    # The state file lost as well (a crash of the host's tools): beta's double is found by its
    # --kubeconfig argument inside the lab's directory, the admin links by their names.
    kube_lab.remember()
    Path(f"/run/cellmesh/lab/{kube_lab.name}/state.json").unlink()
    kube_lab.down_and_check()
    assert not any(pid_alive(p, st) for p, st in doubles.values())
    assert not list((kube_lab.config.parent / "kube").glob(f"{kube_lab.name}-*"))


def test_bad_source_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [MESHCTL, "lab", "up", "--name", "x", "--source", "cloud"],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "MESHCTL_CONFIG": str(tmp_path / "meshctl.json")},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--source" in done.stderr
    assert "'cloud' is not one of 'standalone', 'kubernetes'" in done.stderr
