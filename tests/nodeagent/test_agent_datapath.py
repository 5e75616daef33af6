"""The node agent on the real datapath: BPF maps in a test cgroup, routes in test namespaces.

Topology; every address exists only inside the test's two namespaces (the host's are only read):

    cmtest-<hex>a: alpha's node a1                  cmtest-<hex>b: beta's node b1
      ula 192.168.1.10/24  ──────── veth ──────────  ulb 192.168.2.10/24
      192.168.2.0/24 dev ula                         192.168.1.0/24 dev ulb
      10.2.5.0/24 via 192.168.2.10 (the agent's)     lo 10.2.5.5/32, echo :8080 answers "beta"

Control plane on loopback: per cell a real etcd and an in-process meshapi, connected both ways;
the global service demo/echo (VIP 172.20.0.10:80) in both cells with its one endpoint
10.2.5.5:8080 in beta, on node b1 (pod CIDR 10.2.5.0/24). The alpha agent runs in this process
(root namespace, so it reaches the meshapis on loopback): its programs attached to a private
cgroup, its maps pinned under /sys/fs/bpf/cellmesh/test-<hex>, its routes in node a1's namespace.
Clients run in node a1's namespace *and* that cgroup. Neither namespace has a default route, so
a connect the programs did not rewrite fails at once (ENETUNREACH) and sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import select
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from bpf.layout import PROGRAMS
from bpf.pinned_maps import PinnedLbMaps
from meshcore.localetcd import LocalEtcd
from meshcore.model import Endpoint, EndpointPort, Node
from nodeagent.app import AgentApp, DatapathConfig
from nodeagent.peers import PeerState
from nodeagent.routes import DEFAULT_PROTOCOL, RouteTable
from tests.conftest import Pki, wait_for
from tests.meshapi.helpers import peer, service
from tests.nodeagent.conftest import Mesh, MeshCell, RouteNetns, agent_config

REPO = Path(__file__).resolve().parents[2]

VIP = "172.20.0.10"
POD = "10.2.5.5"  # beta's backend "pod", on node b1's loopback
POD_CIDR = "10.2.5.0/24"
NODE_A = "192.168.1.10"  # inside alpha's node CIDR
NODE_B = "192.168.2.10"  # inside beta's node CIDR
BACKEND = {f"{POD}:8080": 2}  # backend -> cell id, as the maps hold it
REPLY = f"{VIP}:80 beta"  # what a client sees: the VIP it dialled (getpeername), beta's answer
NODE_A2 = "192.168.1.20"  # another node of alpha, on node a1's link
A2_POD_CIDR = "10.1.6.0/24"
# Direct node routes: to every other node's pods, of the own cell and of the peer.
ROUTES = {POD_CIDR: (NODE_B, "ula"), A2_POD_CIDR: (NODE_A2, "ula")}

ECHO_SERVER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(512)
print("listening", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.sendall(b"beta")
"""

# count connects, one every interval seconds; a line per connect, then a JSON summary.
CLIENT = """
import json, socket, sys, time
host, port, count, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
replies, failures = {}, []
for i in range(count):
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            seen = "%s:%d" % s.getpeername()
            data = b""
            while chunk := s.recv(64):
                data += chunk
        key = seen + " " + data.decode()
        replies[key] = replies.get(key, 0) + 1
    except OSError as e:
        failures.append("%d %s %s" % (i, type(e).__name__, e))
    print("connect", i, flush=True)
    time.sleep(max(0.0, interval - (time.monotonic() - started)))
print(json.dumps({"replies": replies, "failures": failures}), flush=True)
"""


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


# --- fixtures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    node_a: RouteNetns
    node_b: RouteNetns

    def agent_routes(self) -> dict[str, tuple[str, str]]:
        """The agent's routes in node a1 (``ip route show proto <ours>``): dst -> (via, dev)."""
        shown = self.node_a.routes("proto", str(DEFAULT_PROTOCOL))
        return {dst: (r.get("gateway", ""), r.get("dev", "")) for dst, r in shown.items()}


@pytest.fixture
def topology(root_netns_unchanged: None) -> Iterator[Topology]:
    tag = secrets.token_hex(4)
    topo = Topology(RouteNetns(f"cmtest-{tag}a"), RouteNetns(f"cmtest-{tag}b"))
    a, b = topo.node_a, topo.node_b
    made: list[str] = []
    echo: subprocess.Popen[str] | None = None
    try:
        for ns in (a, b):
            ip("netns", "add", ns.name)
            made.append(ns.name)
        # Made inside node a1, the peer end created straight in node b1: never in the host's.
        a.ip("link", "add", "ula", "type", "veth", "peer", "name", "ulb", "netns", b.name)
        a.ip("addr", "add", f"{NODE_A}/24", "dev", "ula")
        b.ip("addr", "add", f"{NODE_B}/24", "dev", "ulb")
        b.ip("addr", "add", f"{POD}/32", "dev", "lo")
        for ns, link in ((a, "ula"), (b, "ulb")):
            ns.ip("link", "set", "lo", "up")
            ns.ip("link", "set", link, "up")
        # The two node CIDRs differ: each node reaches the other's directly on the link.
        a.ip("route", "add", "192.168.2.0/24", "dev", "ula")
        b.ip("route", "add", "192.168.1.0/24", "dev", "ulb")
        echo = subprocess.Popen(
            ["ip", "netns", "exec", b.name, sys.executable, "-c", ECHO_SERVER, POD, "8080"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert echo.stdout is not None
        readable, _, _ = select.select([echo.stdout], [], [], 10)
        if not readable or echo.stdout.readline().strip() != "listening":
            echo.kill()
            raise RuntimeError(f"echo server did not start: {echo.communicate(timeout=5)[1]}")
        yield topo
    finally:
        if echo is not None and echo.poll() is None:
            echo.kill()
            echo.communicate(timeout=5)
        failed = []
        for name in made:
            try:
                ip("netns", "del", name)
            except RuntimeError as e:
                failed.append(str(e))
        assert not failed, failed
    assert not any(name in ip("netns", "list") for name in made), "a namespace was left behind"


@pytest.fixture
async def datapath_mesh(pki: Pki, etcd_factory: Callable[[str], LocalEtcd]) -> AsyncIterator[Mesh]:
    """Alpha and beta connected both ways; demo/echo global in both, its pod on beta's node."""
    cells = [MeshCell(n, await asyncio.to_thread(etcd_factory, n), pki) for n in ("alpha", "beta")]
    alpha, beta = cells
    try:
        for cell in cells:
            await cell.start()
        await alpha.write(
            puts=[
                service("alpha", vip=VIP),
                peer("alpha", "beta", id_=beta.id, address=beta.address),
                # Alpha's nodes: a1 is the agent's own (no route to its own pods), a2 another.
                Node(cell="alpha", name="a1", addresses=[ip_address(NODE_A)],
                     pod_cidrs=[ip_network("10.1.5.0/24")]),
                Node(cell="alpha", name="a2", addresses=[ip_address(NODE_A2)],
                     pod_cidrs=[ip_network(A2_POD_CIDR)]),
            ]
        )  # fmt: skip
        pod = Endpoint(
            cell="beta",
            namespace="demo",
            service="echo",
            address=ip_address(POD),
            node="b1",
            ports=[EndpointPort(name="http", port=8080)],
        )
        node = Node(
            cell="beta", name="b1", addresses=[ip_address(NODE_B)], pod_cidrs=[ip_network(POD_CIDR)]
        )
        await beta.write(
            puts=[
                service("beta", vip=VIP),
                peer("beta", "alpha", id_=alpha.id, address=alpha.address),
                pod,
                node,
            ]
        )
        yield Mesh(alpha, beta)
    finally:
        for cell in cells:
            await cell.stop()  # etcd_factory stops the etcds


@dataclass
class AlphaAgent:
    """Alpha's agent on node a1 (AgentApp: BPF object, pinned maps, routes); restartable."""

    pki: Pki
    mesh: Mesh
    datapath: DatapathConfig
    netns: str
    app: AgentApp | None = None
    _tables: list[RouteTable] = field(default_factory=list)

    async def start(self) -> AgentApp:
        assert self.app is None, "agent already running"
        routes = RouteTable(netns=self.netns)
        self._tables.append(routes)
        self.app = AgentApp(
            agent_config(self.pki, self.mesh),
            http="127.0.0.1:0",
            datapath=self.datapath,
            routes=routes,
        )
        await self.app.start()
        return self.app

    async def stop(self) -> None:
        """Stop the agent (the datapath and routes stay); safe to call twice."""
        app, self.app = self.app, None
        if app is not None:
            await app.stop()
        for table in self._tables:
            table.close()

    def ready(self) -> bool:
        agent = self.app.agent if self.app else None
        return agent is not None and agent.ready()[0] and agent.reconciler.deletes_allowed


@pytest.fixture
async def alpha_agent(
    pki: Pki, datapath_mesh: Mesh, datapath: DatapathConfig, topology: Topology
) -> AsyncIterator[AlphaAgent]:
    runner = AlphaAgent(pki, datapath_mesh, datapath, topology.node_a.name)
    try:
        yield runner
    finally:
        await runner.stop()


@dataclass
class ConnectStream:
    """A client process doing connects to the VIP; ``progress`` counts the finished ones."""

    proc: asyncio.subprocess.Process
    progress: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode().strip()
            if line.startswith("connect "):
                self.progress += 1
            elif line.startswith("{"):
                self.summary = json.loads(line)

    async def result(self, timeout: float = 20) -> tuple[dict[str, int], list[str]]:
        """Wait for the client to finish: (reply -> count, failures)."""
        assert self.reader is not None
        await asyncio.wait_for(self.reader, timeout)
        assert self.proc.stderr is not None
        stderr = (await self.proc.stderr.read()).decode()
        assert await self.proc.wait() == 0, f"client failed: {stderr}"
        return self.summary["replies"], self.summary["failures"]


@dataclass
class Clients:
    topology: Topology
    cgroup: Path
    started: list[ConnectStream] = field(default_factory=list)

    async def start(
        self, count: int, *, interval: float = 0.0, in_cgroup: bool = True
    ) -> ConnectStream:
        """Connects from node a1's namespace; in the agent's cgroup unless told otherwise."""
        client = [sys.executable, "-c", CLIENT, VIP, "80", str(count), str(interval)]
        argv = ["ip", "netns", "exec", self.topology.node_a.name, *client]
        if in_cgroup:
            # The shell joins the cgroup, then execs: the client is in it before its first
            # socket (a preexec_fn would fork this multi-threaded process).
            join = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'
            argv = ["sh", "-c", join, "sh", str(self.cgroup), *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        stream = ConnectStream(proc)
        stream.reader = asyncio.create_task(stream.read())
        self.started.append(stream)
        return stream

    async def run(self, count: int, **kwargs: Any) -> tuple[dict[str, int], list[str]]:
        return await (await self.start(count, **kwargs)).result()


@pytest.fixture
async def clients(topology: Topology, cgroup: Path) -> AsyncIterator[Clients]:
    made = Clients(topology, cgroup)
    try:
        yield made
    finally:
        for stream in made.started:
            if stream.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    stream.proc.kill()  # by its pid: one we started
            await stream.proc.wait()
            if stream.reader is not None:
                stream.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stream.reader


# --- helpers ----------------------------------------------------------------------------------


def served(datapath: DatapathConfig) -> dict[str, int]:
    """The VIP's backends (address:port -> cell id), read from the pinned maps themselves."""
    with PinnedLbMaps(datapath.pin_dir / "maps") as maps:
        contents = maps.contents()
    for svc in contents.services:
        if str(svc.frontend.address) == VIP and svc.frontend.port == 80:
            backends = (contents.backends[b] for b in svc.backend_ids if b in contents.backends)
            return {f"{be.address}:{be.port}": be.cell_id for be in backends}
    return {}


def maps_dump(datapath: DatapathConfig) -> str:
    with PinnedLbMaps(datapath.pin_dir / "maps") as maps:
        return maps.dump()


def attach_types(cgroup: Path) -> list[str]:
    """`bpftool cgroup show`: the attach type of every program attached to this cgroup."""
    shown = subprocess.run(
        ["bpftool", "-j", "cgroup", "show", str(cgroup)],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return sorted(entry["attach_type"] for entry in json.loads(shown or "[]"))


async def converged(agent: AlphaAgent, datapath: DatapathConfig, topology: Topology) -> None:
    await wait_for(agent.ready, timeout=15, what="the agent synced with both cells")
    await wait_for(lambda: served(datapath) == BACKEND, timeout=10, what="beta's pod in the maps")
    await wait_for(lambda: topology.agent_routes() == ROUTES, timeout=10, what="the route to b1")


# --- tests ------------------------------------------------------------------------------------


async def test_connect_to_the_vip_reaches_the_peer_pod_over_the_agents_route(
    alpha_agent: AlphaAgent, datapath: DatapathConfig, topology: Topology, clients: Clients
) -> None:
    await alpha_agent.start()
    await converged(alpha_agent, datapath, topology)
    assert topology.agent_routes() == ROUTES

    replies, failures = await clients.run(5)
    assert (replies, failures) == ({REPLY: 5}, [])

    # Outside the cgroup nothing is rewritten, and nothing in node a1 routes to the VIP.
    replies, failures = await clients.run(1, in_cgroup=False)
    assert replies == {}
    assert [f.split()[1] for f in failures] == ["OSError"]
    assert "Network is unreachable" in failures[0]


async def test_dead_peer_meshapi_keeps_backend_route_and_connects(
    alpha_agent: AlphaAgent,
    datapath_mesh: Mesh,
    datapath: DatapathConfig,
    topology: Topology,
    clients: Clients,
) -> None:
    app = await alpha_agent.start()
    await converged(alpha_agent, datapath, topology)
    assert app.agent is not None
    agent = app.agent

    await datapath_mesh.beta.stop()
    beta = agent.watchers["beta"]
    await wait_for(lambda: beta.state is PeerState.STALE, timeout=10, what="beta stale")
    # Let the agent run many rounds on the stale peer before looking.
    rounds = agent.stats.rounds
    await wait_for(lambda: agent.stats.rounds >= rounds + 10, what="ten agent rounds")

    assert beta.state is PeerState.STALE
    assert served(datapath) == BACKEND
    assert topology.agent_routes() == ROUTES
    replies, failures = await clients.run(20, interval=0.01)
    assert (replies, failures) == ({REPLY: 20}, [])


async def test_agent_restart_during_a_connect_stream_loses_no_connect(
    alpha_agent: AlphaAgent,
    datapath: DatapathConfig,
    topology: Topology,
    clients: Clients,
) -> None:
    await alpha_agent.start()
    await converged(alpha_agent, datapath, topology)
    before = maps_dump(datapath)
    hooks = sorted(spec.attach_name for spec in PROGRAMS)
    assert attach_types(datapath.cgroup) == hooks

    stream = await clients.start(300, interval=0.01)
    await wait_for(lambda: stream.progress >= 30, what="the stream under way")
    await alpha_agent.stop()
    # No agent at all for a while: the pinned programs and maps serve on their own.
    stopped_at = stream.progress
    await wait_for(lambda: stream.progress >= stopped_at + 30, what="connects without an agent")
    await alpha_agent.start()
    await wait_for(alpha_agent.ready, timeout=15, what="the restarted agent synced")
    assert stream.progress < 300, "the restart did not happen during the stream"

    replies, failures = await stream.result()
    assert (replies, failures) == ({REPLY: 300}, [])
    # One attachment per hook (the pinned links were updated, not doubled); nothing churned.
    assert attach_types(datapath.cgroup) == hooks
    assert maps_dump(datapath) == before
    assert topology.agent_routes() == ROUTES
