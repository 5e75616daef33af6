"""The `nodeagent` process as a DaemonSet runs it: `--node-name-from-env`, kubernetes registration.

The agent process runs against the two-cell test mesh (real etcds and meshapis, in this test's
event loop) on the real datapath (a private cgroup, pins under /sys/fs/bpf) with its routes in a
private namespace. Its node's records are written straight into alpha's etcd as meshapi's
Kubernetes source writes them from Node objects (InternalIP, spec.podCIDRs): the agent must
register nothing, wait (not ready, saying why) for its own Node record, still publish its
`AgentStatus`, and route to the other nodes' pod CIDRs as their records come and change.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from certs import Role
from meshcore.client import MeshClient
from meshcore.localetcd import free_loopback_port
from meshcore.model import AgentStatus, Kind, Node
from nodeagent.app import DatapathConfig
from tests.conftest import Pki, http_get
from tests.nodeagent.conftest import Mesh, RouteNetns, stop_process

NODEAGENT = str(Path(sys.executable).parent / "nodeagent")
NODE_ENV = "NODE_NAME"
GATEWAY_LINK_ADDRESS = "192.168.1.1/24"  # on the route namespace's cm0: alpha's node CIDR
OWN = Node(cell="alpha", name="a1", addresses=["192.168.1.10"], pod_cidrs=["10.1.5.0/24"])
OTHER = Node(cell="alpha", name="a2", addresses=["192.168.1.20"], pod_cidrs=["10.1.6.0/24"])
MOVED = Node(cell="alpha", name="a2", addresses=["192.168.1.20"], pod_cidrs=["10.1.7.0/24"])


def _agent_routes(ns: RouteNetns) -> dict[str, str]:
    """The agent's routes (protocol 212) in the namespace: destination -> gateway."""
    return {dst: r.get("gateway", "") for dst, r in ns.routes("proto", "212").items()}


async def test_in_cluster_agent_waits_for_its_node_record_and_follows_node_records(
    pki: Pki, mesh: Mesh, datapath: DatapathConfig, route_netns: RouteNetns, tmp_path: Path
) -> None:
    route_netns.ip("addr", "add", GATEWAY_LINK_ADDRESS, "dev", "cm0")
    http = free_loopback_port()
    args = [
        NODEAGENT, "--cell", "alpha", "--node-name-from-env", NODE_ENV,
        "--registration", "kubernetes", "--meshapi", mesh.alpha.address,
        "--tls-dir", str(pki.tls("alpha", Role.AGENT, node="a1")),
        "--cgroup", str(datapath.cgroup), "--pin-dir", str(datapath.pin_dir),
        "--bpf-object", str(datapath.object_path), "--http", f"127.0.0.1:{http}",
        "--netns", route_netns.name, "--sync-timeout", "20", "--log-level", "warning",
    ]  # fmt: skip
    log = tmp_path / "nodeagent.log"
    env = {**os.environ, NODE_ENV: "a1"}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*args, stdout=out, stderr=out, env=env)
    admin = MeshClient(mesh.alpha.address, pki.tls("alpha", Role.ADMIN))

    async def until(check: Callable[[], bool], what: str) -> None:
        """Poll ``check`` in a thread (the meshapis run on this loop) for up to 30 s."""
        for _ in range(300):
            assert proc.returncode is None, log.read_text()
            if await asyncio.to_thread(check):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; log:\n{log.read_text()}")

    async def records(kind: Kind) -> dict[str, object]:
        listed, _ = await admin.list([kind])
        return dict(listed)

    try:
        # Synced with both cells, but no Node record for a1: not ready, and it says why.
        missing = "no Node record cellmesh/v1/nodes/alpha/a1"
        await until(lambda: missing in http_get(http, "/readyz")[1], "/readyz naming the record")
        assert http_get(http, "/readyz")[0] == 503
        status = json.loads((await asyncio.to_thread(http_get, http, "/status"))[1])
        assert (status["node"], status["ready"], status["own"]["synced"]) == ("a1", False, True)
        assert missing in status["reason"]
        # Its AgentStatus reaches meshapi (agents still write those), saying the same ...
        agent_key = "cellmesh/v1/agents/alpha/a1"
        for _ in range(300):
            report = (await records(Kind.AGENT)).get(agent_key)
            if isinstance(report, AgentStatus) and missing in report.reason:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(
                f"no AgentStatus naming the missing record; log:\n{log.read_text()}"
            )
        assert report.ready is False
        # ... and it registered no node of its own (a standalone agent writes it first).
        assert OWN.key() not in await records(Kind.NODE)

        # The Kubernetes source writes the cell's Node records: a1 becomes ready, and the
        # route to a2's pod CIDR via a2's InternalIP appears in the node's namespace.
        await mesh.alpha.write_etcd(puts=[OWN, OTHER])
        await until(lambda: http_get(http, "/readyz") == (200, "ready\n"), "ready")
        await until(
            lambda: _agent_routes(route_netns) == {"10.1.6.0/24": "192.168.1.20"}, "route to a2"
        )
        # a2's Node object changes its pod CIDR: the route follows.
        await mesh.alpha.write_etcd(puts=[MOVED])
        await until(
            lambda: _agent_routes(route_netns) == {"10.1.7.0/24": "192.168.1.20"}, "moved route"
        )
        # The own Node is deleted (node leaving the cluster): not ready again, datapath kept.
        await mesh.alpha.write_etcd(deletes=[OWN.key()])
        await until(lambda: missing in http_get(http, "/readyz")[1], "not ready without a1")
        assert (datapath.pin_dir / "maps").is_dir()
        assert _agent_routes(route_netns) == {"10.1.7.0/24": "192.168.1.20"}
        assert set(await records(Kind.NODE)) == {MOVED.key()}, "the agent wrote no node"
    finally:
        await admin.close()
        returncode = await stop_process(proc)
    assert returncode == 0, log.read_text()


def _refused(args: list[str], message: str, env: dict[str, str]) -> None:
    """The command exits 2 (a usage error) with ``message`` on stderr and no traceback."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


UNSET = f"CELLMESH_TEST_UNSET_{secrets.token_hex(4).upper()}"


@pytest.mark.parametrize(
    ("flags", "env_value", "message"),
    [
        pytest.param(
            ["--node", "a1", "--node-name-from-env", "NODE_NAME"], "a1",
            "exactly one of --node NAME and --node-name-from-env VAR", id="both",
        ),
        pytest.param([], None, "exactly one of --node NAME", id="neither"),
        pytest.param(
            ["--node-name-from-env", UNSET], None, f"environment variable {UNSET} is not set",
            id="env-unset",
        ),
        pytest.param(
            ["--node-name-from-env", "NODE_NAME"], "Node_1",
            "environment variable NODE_NAME: 'Node_1' is not a valid DNS-1123 subdomain",
            id="env-invalid",
        ),
        pytest.param(
            ["--node-name-from-env", "NODE_NAME"], "",
            "environment variable NODE_NAME: '' is not a valid DNS-1123 subdomain",
            id="env-empty",
        ),
        pytest.param(["--node", "a_1"], None, "--node", id="node-invalid"),
        pytest.param(
            ["--node", "a1", "--registration", "kubernetes", "--node-address", "192.168.1.10"],
            None, "--node-address: not allowed with --registration kubernetes",
            id="kubernetes-node-address",
        ),
        pytest.param(
            ["--node", "a1", "--registration", "kubernetes", "--pod-cidr", "10.1.5.0/24"],
            None, "--pod-cidr: not allowed with --registration kubernetes",
            id="kubernetes-pod-cidr",
        ),
        pytest.param(
            ["--node", "a1", "--registration", "kubernetes", "--workloads", "/dev/null"],
            None, "--workloads: not allowed with --registration kubernetes",
            id="kubernetes-workloads",
        ),
        pytest.param(
            ["--node", "a1", "--registration", "cloud"], None, "--registration", id="registration"
        ),
        pytest.param(
            ["--node", "a1", "--cgroup", "/sys/fs/cgroup/unified"], None,
            "only an in-cluster agent, --registration kubernetes, attaches to the cgroup2 root",
            id="standalone-root-cgroup",
        ),
    ],
)  # fmt: skip
def test_in_cluster_flags_are_refused_with_a_clear_message(
    tmp_path: Path, flags: list[str], env_value: str | None, message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_NAME", UNSET)}
    if env_value is not None:
        env["NODE_NAME"] = env_value
    base = [
        NODEAGENT, "--cell", "alpha", "--meshapi", "127.0.0.1:1", "--tls-dir", str(tmp_path),
        "--pin-dir", str(tmp_path / "pins"),
    ]  # fmt: skip
    if "--cgroup" not in flags:
        base += ["--cgroup", str(tmp_path)]
    _refused(base + flags, message, env)
    assert not (tmp_path / "pins").exists(), "nothing is created before the flags are checked"
