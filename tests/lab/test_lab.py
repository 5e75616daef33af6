"""One real lab (2 cells x 2 nodes x 1 pod) driven as an operator and as the e2e suite do.

Real etcd, meshapi and nodeagent processes, real namespaces, cgroups and BPF. The cells are
connected by Peer records written with an admin client in both cells. Traffic goes only to pod
addresses inside the lab's namespaces. The module's last test takes the lab down and proves that
nothing is left; the fixture's finalizer does the same (a second ``down``) even after a failure.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.driver import PodSpec, PortSpec
from meshcore.client import MeshClient
from meshcore.model import Peer
from meshctl.lab import LabDriver
from tests.lab.conftest import Lab, bpffs_mounts, cleaned_up, ip_json, new_lab


@pytest.fixture(scope="module")
def mesh_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = new_lab(tmp_path_factory.mktemp("lab"))
    with cleaned_up([lab]):
        done = lab.lab("up", "--cells", "2", "--nodes", "2", "--pods-per-node", "1", "--wait")
        lab.outputs["up"] = done
        assert done.returncode == 0, done.stderr
        yield lab


@pytest.fixture(scope="module")
def connected(mesh_lab: Lab) -> Lab:
    """alpha and beta connected both ways (Peer records written by each cell's admin)."""
    cells = {cell["name"]: cell for cell in mesh_lab.status()["cells"]}
    state = json.loads(Path(mesh_lab.status()["state_dir"], "state.json").read_text())
    admin_tls = {cell["name"]: Path(cell["admin_tls"]) for cell in state["cells"]}

    async def connect() -> None:
        for a, b in (("alpha", "beta"), ("beta", "alpha")):
            peer = Peer(cell=a, name=b, id=cells[b]["id"], address=cells[b]["meshapi"]["address"])
            async with MeshClient(cells[a]["meshapi"]["address"], admin_tls[a]) as admin:
                await admin.write(puts=[peer])

    asyncio.run(connect())
    return mesh_lab


def test_up_reports_each_step_and_a_summary(mesh_lab: Lab) -> None:
    done = mesh_lab.outputs["up"]
    for step in ("certificates", "namespaces", "etcd (2)", "meshapi (2)", "node agents (4)",
                 "pods (4 echo servers)", "every meshapi and agent ready"):  # fmt: skip
        assert f"[lab {mesh_lab.name}] {step}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    for row in ("alpha/node1/echo-1-0   10.1.2.10", f"{mesh_lab.name}-beta"):
        assert row in done.stdout, done.stdout


def test_status_json_names_every_part(mesh_lab: Lab) -> None:
    doc = mesh_lab.status()
    assert doc["schema"] == "cellmesh.lab/v1"
    assert (doc["lab"], doc["phase"], doc["healthy"]) == (mesh_lab.name, "up", True)
    assert doc["underlay"] == {"netns": f"cml-{mesh_lab.name}-ul", "exists": True}
    summary = {
        (cell["name"], cell["id"], cell["pod_cidr"], cell["context"], cell["context_present"])
        for cell in doc["cells"]
    }
    assert summary == {
        ("alpha", 1, "10.1.0.0/16", f"{mesh_lab.name}-alpha", True),
        ("beta", 2, "10.2.0.0/16", f"{mesh_lab.name}-beta", True),
    }
    nodes = {
        f"{cell['name']}/{node['name']}": (node["address"], node["pod_cidr"], node["netns_exists"])
        for cell in doc["cells"]
        for node in cell["nodes"]
    }
    assert nodes == {
        "alpha/node0": ("192.168.1.10", "10.1.1.0/24", True),
        "alpha/node1": ("192.168.1.11", "10.1.2.0/24", True),
        "beta/node0": ("192.168.2.10", "10.2.1.0/24", True),
        "beta/node1": ("192.168.2.11", "10.2.2.0/24", True),
    }
    pods = {
        f"{cell['name']}/{node['name']}/{pod['name']}": (pod["address"], pod["alive"])
        for cell in doc["cells"]
        for node in cell["nodes"]
        for pod in node["pods"]
    }
    assert pods == {
        "alpha/node0/echo-0-0": ("10.1.1.10", True),
        "alpha/node1/echo-1-0": ("10.1.2.10", True),
        "beta/node0/echo-0-0": ("10.2.1.10", True),
        "beta/node1/echo-1-0": ("10.2.2.10", True),
    }
    for cell in doc["cells"]:
        states = [cell["etcd"]["state"], cell["meshapi"]["state"]]
        states += [node["agent"]["state"] for node in cell["nodes"]]
        assert states == ["running"] * len(states)
        assert cell["etcd"]["alive"]
        assert cell["etcd"]["healthy"]
        assert cell["meshapi"]["alive"]
        assert cell["meshapi"]["ready"]
        assert cell["meshapi"]["address"].startswith("127.0.0.1:")
        assert all(node["agent"]["alive"] and node["agent"]["ready"] for node in cell["nodes"])
    contexts = json.loads(mesh_lab.config.read_text())["contexts"]
    assert contexts[f"{mesh_lab.name}-alpha"]["server"] == doc["cells"][0]["meshapi"]["address"]


def test_agents_starting_together_leave_one_bpffs_mount(mesh_lab: Lab) -> None:
    # Four agents started at once; each makes sure bpffs is mounted, none may stack another.
    assert bpffs_mounts("/sys/fs/bpf") == 1


def test_up_refuses_an_existing_lab(mesh_lab: Lab) -> None:
    done = mesh_lab.lab("up", "--cells", "1", "--nodes", "1")
    assert done.returncode == 1
    assert f"run 'meshctl lab down --name {mesh_lab.name}' first" in done.stderr
    assert "Traceback" not in done.stderr


PROTOCOLS = ["tcp", "udp"]


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_nodes_of_a_cell_reach_each_others_pods(mesh_lab: Lab, proto: str) -> None:
    assert mesh_lab.reach("alpha/node0/echo-0-0", "10.1.2.10", proto, 8) == "alpha node1 echo-1-0"


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_connected_cells_reach_each_others_pods(connected: Lab, proto: str) -> None:
    # The first exchange may wait for the agents to program the routes to the peer's nodes.
    assert connected.reach("alpha/node0/echo-0-0", "10.2.1.10", proto, 10) == "beta node0 echo-0-0"
    assert connected.reach("beta/node1/echo-1-0", "10.1.2.10", proto, 5) == "alpha node1 echo-1-0"


def test_exec_runs_in_the_pod_with_its_stdio_and_exit_code(mesh_lab: Lab) -> None:
    done = mesh_lab.exec("beta/node1/echo-1-0", "sh", "-c", "cat; exit 7", input="hello\n")
    assert (done.returncode, done.stdout) == (7, "hello\n")
    where = mesh_lab.exec(
        "beta/node1/echo-1-0", "sh", "-c", "ip -4 -o addr show dev eth0; cat /proc/self/cgroup"
    )
    assert where.returncode == 0, where.stderr
    assert "10.2.2.10/24" in where.stdout
    assert f"0::/cellmesh-lab-{mesh_lab.name}-beta-node1" in where.stdout


def test_exec_names_the_valid_pods_for_a_bad_target(mesh_lab: Lab) -> None:
    unknown = mesh_lab.exec("beta/node9/echo", "true")
    assert unknown.returncode == 1
    assert "no pod beta/node9/echo" in unknown.stderr
    assert "alpha/node0/echo-0-0" in unknown.stderr
    malformed = mesh_lab.exec("beta", "true")
    assert malformed.returncode == 2
    assert "is not CELL/NODE/POD" in malformed.stderr
    assert "Traceback" not in unknown.stderr + malformed.stderr


def _bridge_mac(netns: str) -> str:
    return str(ip_json("-n", netns, "link", "show", "br-pods")[0]["address"])


def test_driver_adds_readies_and_deletes_pods(connected: Lab) -> None:
    driver = LabDriver(connected.name, connected.config)
    node_netns = connected.status()["cells"][1]["nodes"][1]["netns"]
    gateway_mac = _bridge_mac(node_netns)
    assert gateway_mac == "02:00:0a:02:02:01"  # from the gateway 10.2.2.1, not from a port
    assert driver.cells() == ["alpha", "beta"]
    assert driver.nodes("beta") == ["node0", "node1"]
    assert driver.context("beta") == f"{connected.name}-beta"
    assert driver.config_path() == str(connected.config)
    pod = driver.add_pod(
        PodSpec(cell="beta", node="node1", name="extra", services=[("demo", "echo")],
                ports=[PortSpec("http", 8080), PortSpec("udp", 8080, "UDP")])
    )  # fmt: skip
    connected.remember()
    assert pod.address == "10.2.2.11"
    assert connected.reach("alpha/node1/echo-1-0", pod.address, "tcp") == "beta node1 extra"
    ran = driver.exec("beta", "node1", "extra", [driver.python(), "-c", "print('in pod')"])
    assert (ran.returncode, ran.stdout) == (0, "in pod\n")

    workloads = Path(connected.status()["cells"][1]["nodes"][1]["workloads"])
    driver.set_ready("beta", "node1", "extra", False)
    endpoints = {e["address"]: e["ready"] for e in json.loads(workloads.read_text())["endpoints"]}
    assert endpoints == {"10.2.2.10": True, "10.2.2.11": False}

    driver.delete_pod("beta", "node1", "extra")
    driver.delete_pod("beta", "node1", "extra")  # idempotent
    endpoints = {e["address"]: e["ready"] for e in json.loads(workloads.read_text())["endpoints"]}
    assert endpoints == {"10.2.2.10": True}
    beta1 = connected.status()["cells"][1]["nodes"][1]
    assert [p["name"] for p in beta1["pods"]] == ["echo-1-0"]
    assert not Path(f"/var/run/netns/{beta1['netns']}-11").exists()
    # Pods coming and going never move the gateway's MAC (the pods' neighbour entries hold it).
    assert _bridge_mac(node_netns) == gateway_mac


def test_driver_restarts_the_control_plane(connected: Lab) -> None:
    driver = LabDriver(connected.name, connected.config)
    before = connected.status()["cells"]
    driver.restart_agent("alpha", "node0")
    driver.stop_meshapi("beta")
    stopped = connected.status()["cells"][1]["meshapi"]
    assert (stopped["alive"], stopped["ready"], stopped["state"]) == (False, False, "stopped")
    driver.start_meshapi("beta")
    connected.remember()
    after = connected.status()["cells"]
    assert after[1]["meshapi"]["ready"]
    assert after[1]["meshapi"]["alive"]
    assert after[1]["meshapi"]["address"] == before[1]["meshapi"]["address"]
    assert after[1]["meshapi"]["pid"] != before[1]["meshapi"]["pid"]
    agent = after[0]["nodes"][0]["agent"]
    assert agent["alive"]
    assert agent["pid"] != before[0]["nodes"][0]["agent"]["pid"]
    # The restarted agent and meshapi carry traffic again.
    assert connected.reach("alpha/node0/echo-0-0", "10.2.2.10", "tcp", patience=30) == (
        "beta node1 echo-1-0"
    )


def test_down_removes_everything_and_is_idempotent(mesh_lab: Lab) -> None:
    mesh_lab.down_and_check()
    assert bpffs_mounts("/sys/fs/bpf") == 1  # the host's bpffs stays, once
    again = mesh_lab.lab("down")
    assert again.returncode == 0, again.stderr
    assert "nothing to remove" in again.stdout
    gone = mesh_lab.lab("status")
    assert gone.returncode == 1
    assert f"no lab named {mesh_lab.name!r}" in gone.stderr
