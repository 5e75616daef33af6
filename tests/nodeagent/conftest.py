"""Fixtures for the node agent's tests.

Route fixtures (``route_netns``, ``root_netns_unchanged``): a private network namespace
``cmtest-<hex>`` per test, checked with iproute2 (``ip``) as an independent netlink client. The
host's own namespace is only ever read (snapshots compared before and after), never changed;
every namespace a fixture creates is deleted by its finalizer, also when the test fails.

Mesh fixtures (``mesh``, ``agent_factory``): two cells, alpha and beta, each a real etcd and an
in-process meshapi (real gRPC, mTLS, certificates), connected both ways and holding a global
service ``demo/echo``; agents run in process over `FakeLbMaps`. A `MeshCell` can stop and restart
its meshapi on the same port, write straight into its etcd, wipe its etcd, and hold back the
meshapi's sync canaries. Everything is stopped by the finalizers, also when the test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from bpf.fakemaps import FakeLbMaps
from bpf.lbmaps import LbMaps
from bpf.loader import SockLbLoader, pin_root
from certs import Role
from meshapi.app import MeshApiApp, MeshApiConfig
from meshapi.etcd_adapter import EtcdStore, StoreUnavailable
from meshapi.writer import RecordWriter
from meshcore.client import MeshClient
from meshcore.localetcd import LocalEtcd
from meshcore.model import Kind, Record, encode_record
from nodeagent.agent import Agent, AgentConfig
from nodeagent.app import DatapathConfig
from tests.conftest import CELL_CIDRS, CELL_IDS, Pki
from tests.meshapi.helpers import endpoint, peer, service

ROUTE_NETNS_PREFIX = "cmtest-"
ROUTE_NETNS_LINK = "cm0"
ROUTE_NETNS_ADDRESS = "192.168.77.1/24"  # gateways in 192.168.77.0/24 are reachable


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _require_netns_privileges() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        # Never a skip: on a machine where this cannot run, the suite must say so, not pass.
        pytest.fail("needs root and iproute2 to create network namespaces")


@dataclass(frozen=True)
class RouteNetns:
    """A throwaway namespace with link ``cm0`` (192.168.77.1/24, up), inspected with ``ip``."""

    name: str

    def ip(self, *args: str) -> str:
        return _ip("-n", self.name, *args)

    def routes(self, *selector: str) -> dict[str, dict[str, Any]]:
        """``ip -j route show [selector]`` in this namespace, keyed by destination."""
        shown: list[dict[str, Any]] = json.loads(self.ip("-j", "route", "show", *selector))
        return {r["dst"]: r for r in shown}


@pytest.fixture
def route_netns() -> Iterator[RouteNetns]:
    _require_netns_privileges()
    ns = RouteNetns(f"{ROUTE_NETNS_PREFIX}{secrets.token_hex(4)}")
    _ip("netns", "add", ns.name)
    try:
        # A veth pair inside the namespace (the dummy module may be missing); both ends up, so
        # cm0 has carrier and its connected route.
        ns.ip("link", "add", ROUTE_NETNS_LINK, "type", "veth", "peer", "name", "cm1")
        ns.ip("addr", "add", ROUTE_NETNS_ADDRESS, "dev", ROUTE_NETNS_LINK)
        ns.ip("link", "set", "cm1", "up")
        ns.ip("link", "set", ROUTE_NETNS_LINK, "up")
        yield ns
    finally:
        _ip("netns", "del", ns.name)
    assert not route_netns_exists(ns.name), f"{ns.name} left behind"


def route_netns_exists(name: str) -> bool:
    return name in _ip("netns", "list").split()


def _root_netns_snapshot() -> dict[str, Any]:
    return {
        "routes": json.loads(_ip("-j", "route", "show", "table", "all")),
        "rules": json.loads(_ip("-j", "rule", "show")),
    }


@pytest.fixture
def root_netns_unchanged() -> Iterator[None]:
    """Fails the test if the host namespace's IPv4 routes (all tables) or rules changed."""
    _require_netns_privileges()
    before = _root_netns_snapshot()
    yield
    after = _root_netns_snapshot()
    assert after == before, "the host's network namespace changed during the test"


# --- a two-cell mesh for the agent tests --------------------------------------------------------


@dataclass
class MeshCell:
    """One cell: its etcd and its meshapi (restartable on the same port)."""

    name: str
    etcd: LocalEtcd
    pki: Pki
    port: int = 0
    app: MeshApiApp | None = None
    _held: list[Kind] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def id(self) -> int:
        return CELL_IDS[self.name]

    async def start(self, *, hold_canaries: bool = False) -> MeshApiApp:
        """Start meshapi; with hold_canaries its sync canaries wait for `release_canaries`."""
        assert self.app is None, "meshapi already running"
        pod, nodes = CELL_CIDRS[self.name]
        app = MeshApiApp(
            MeshApiConfig(
                cell=self.name,
                cell_id=self.id,
                pod_cidrs=(ip_network(pod),),
                node_cidrs=(ip_network(nodes),),
                etcd_endpoints=(self.etcd.endpoint,),
                listen=f"127.0.0.1:{self.port}",
                tls_dir=self.pki.tls(self.name, Role.MESHAPI),
                http="127.0.0.1:0",
                heartbeat_interval=0.2,
            )
        )
        self.app = app
        if not hold_canaries:
            await app.start()
            await app.wait_ready()
        else:

            def hold(writer: RecordWriter, kind: Kind) -> asyncio.Future[int]:
                self._held.append(kind)
                return asyncio.get_running_loop().create_future()  # never awaited by start()

            with mock.patch.object(RecordWriter, "mark_synced", hold):
                await app.start()
            await asyncio.wait_for(app.cache.synced.wait(), 20)
        self.port = app.grpc_port
        return app

    async def release_canaries(self) -> None:
        """Write the canaries held back by `start(hold_canaries=True)`; wait until they land."""
        assert self.app is not None
        held, self._held = self._held, []
        landed = [self.app.writer.mark_synced(kind) for kind in held]
        await asyncio.wait_for(asyncio.gather(*landed), 20)

    async def stop(self) -> None:
        """Stop meshapi (its etcd keeps running); safe to call twice."""
        app, self.app = self.app, None
        if app is not None:
            await app.stop()

    async def wipe_etcd(self) -> None:
        """Stop etcd, delete its data, start it again empty on the same ports."""
        await asyncio.to_thread(self.etcd.wipe)
        await asyncio.to_thread(self.etcd.start)

    async def write(self, *, puts: Sequence[Record] = (), deletes: Sequence[str] = ()) -> int:
        """Write through meshapi as the cell's admin."""
        async with MeshClient(self.address, self.pki.tls(self.name, Role.ADMIN)) as admin:
            return await admin.write(puts=puts, deletes=deletes)

    async def write_etcd(
        self,
        *,
        puts: Sequence[Record] = (),
        raw: Sequence[tuple[str, bytes]] = (),
        deletes: Sequence[str] = (),
    ) -> int:
        """Write straight into etcd, bypassing meshapi's checks (as a broken source would).

        Retried for a while: right after an etcd restart, gRPC may still be backing off from
        the refused connections of the clients that watched the old process.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while True:
            store = EtcdStore([self.etcd.endpoint])
            await store.connect()
            try:
                return await store.write(
                    puts=[(r.key(), encode_record(r)) for r in puts] + list(raw), deletes=deletes
                )
            except StoreUnavailable:
                if loop.time() > deadline:
                    raise
            finally:
                await store.close()
            await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Mesh:
    alpha: MeshCell
    beta: MeshCell


# What each cell holds at the start: the global service demo/echo (VIP 10.96.0.10:80), its
# endpoints (alpha: 10.1.0.2; beta: 10.2.0.2-4), and a Peer record for the other cell.
ALPHA_ENDPOINTS = (1,)
BETA_ENDPOINTS = (1, 2, 3)


@pytest.fixture
async def mesh(pki: Pki, etcd_factory: Callable[[str], LocalEtcd]) -> AsyncIterator[Mesh]:
    cells = [
        MeshCell(name, await asyncio.to_thread(etcd_factory, name), pki)
        for name in ("alpha", "beta")
    ]
    alpha, beta = cells
    try:
        for cell in cells:
            await cell.start()
        await alpha.write(
            puts=[
                service("alpha"),
                peer("alpha", "beta", id_=beta.id, address=beta.address),
                *(endpoint("alpha", n) for n in ALPHA_ENDPOINTS),
            ]
        )
        await beta.write(
            puts=[
                service("beta"),
                peer("beta", "alpha", id_=alpha.id, address=alpha.address),
                *(endpoint("beta", n) for n in BETA_ENDPOINTS),
            ]
        )
        yield Mesh(alpha, beta)
    finally:
        for cell in cells:
            await cell.stop()  # etcd_factory stops the etcds


AgentFactory = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def agent_factory(pki: Pki, mesh: Mesh) -> AsyncIterator[AgentFactory]:
    """Start in-process agents of cell alpha (node a1) over FakeLbMaps; all stopped at the end."""
    started: list[Agent] = []

    async def start(*, maps: LbMaps | None = None, **overrides: Any) -> Agent:
        agent = Agent(agent_config(pki, mesh, **overrides), maps=maps or FakeLbMaps())
        started.append(agent)
        await agent.start()
        return agent

    yield start
    for agent in started:
        await agent.stop()


def agent_config(pki: Pki, mesh: Mesh, **overrides: Any) -> AgentConfig:
    """Short timeouts, so that state changes show within a test's patience."""
    settings: dict[str, Any] = {
        "cell": "alpha",
        "node": "a1",
        "meshapi": mesh.alpha.address,
        "tls_dir": pki.tls("alpha", Role.AGENT, node="a1"),
        "tick": 0.05,
        "heartbeat_timeout": 3.0,
        "sync_timeout": 30.0,
        "backoff": (0.05, 0.1, 0.2),
    }
    settings.update(overrides)
    return AgentConfig(**settings)


# --- the agent's datapath: a pin instance on the private `cgroup` (tests/conftest.py) ---------


@pytest.fixture
def datapath(sock_lb_object: Path, cgroup: Path) -> Iterator[DatapathConfig]:
    instance = f"test-{secrets.token_hex(5)}"
    config = DatapathConfig(cgroup=cgroup, pin_dir=pin_root(instance), object_path=sock_lb_object)
    try:
        yield config
    finally:
        # Link pins first (the programs detach), then the maps; the cellmesh dir if empty.
        SockLbLoader(object_path=sock_lb_object, instance=instance).unpin()
    assert not config.pin_dir.exists(), f"{config.pin_dir} left behind"


async def stop_process(proc: asyncio.subprocess.Process, *, timeout: float = 15) -> int:
    """SIGTERM the agent process we started and reap it (SIGKILL, then raise, when it does not
    exit in ``timeout``: it is reaped before the fixtures remove its cgroup and pins)."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()  # ours, by pid
        await proc.wait()
        raise
