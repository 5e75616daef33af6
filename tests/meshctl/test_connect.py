"""``meshctl connect|disconnect`` against real meshapis (in process), real etcd and real certs.

Each cell is a real etcd and meshapi; meshctl runs in a worker thread (it calls ``asyncio.run``)
while the meshapis serve on the test's loop. Connected cells are then watched by real in-process
agents (over `FakeLbMaps`) to show that the Peer records written are the ones agents can use.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bpf.fakemaps import FakeLbMaps
from certs import Role, issue_certificate
from meshapi.app import MeshApiApp, MeshApiConfig
from meshcore.client import AccessDenied, MeshClient
from meshcore.lbpolicy import ServiceRef
from meshcore.localetcd import LocalEtcd
from meshcore.model import Kind, Peer, peer_key
from meshctl.cli import cli
from meshctl.contexts import Context, add_context
from nodeagent.agent import Agent, AgentConfig
from nodeagent.peers import PeerState
from tests.conftest import CELL_CIDRS, CELL_IDS, Pki, wait_for
from tests.meshapi.helpers import endpoint, service


@dataclass
class Cells:
    """Starts meshapis with any name, id and CIDRs, each with a meshctl context of its admin."""

    pki: Pki
    config: Path
    etcd_factory: Callable[[str], LocalEtcd]
    apps: dict[str, MeshApiApp]

    async def start(
        self,
        context: str,
        *,
        cell: str | None = None,
        cell_id: int | None = None,
        pod: str | None = None,
        nodes: str | None = None,
        pki: Pki | None = None,
        tls_dir: Path | None = None,
    ) -> MeshApiApp:
        cell = cell or context
        pki = pki or self.pki
        default_pod, default_nodes = CELL_CIDRS[cell]
        etcd = await asyncio.to_thread(self.etcd_factory, context)
        app = MeshApiApp(
            MeshApiConfig(
                cell=cell,
                cell_id=cell_id or CELL_IDS[cell],
                pod_cidrs=(ip_network(pod or default_pod),),
                node_cidrs=(ip_network(nodes or default_nodes),),
                etcd_endpoints=(etcd.endpoint,),
                listen="127.0.0.1:0",
                tls_dir=tls_dir or pki.tls(cell, Role.MESHAPI),
                http="127.0.0.1:0",
                heartbeat_interval=0.2,
            )
        )
        self.apps[context] = app
        await app.start()
        await app.wait_ready()
        self.add_context(context, f"127.0.0.1:{app.grpc_port}", pki.tls(cell, Role.ADMIN))
        return app

    def add_context(self, name: str, server: str, tls_dir: Path) -> None:
        add_context(self.config, Context(name, server, tls_dir))

    async def run(self, *args: str) -> Result:
        argv = ["--config", str(self.config), *args]
        env: dict[str, str | None] = {"MESHCTL_CONTEXT": None, "MESHCTL_CONFIG": None}
        return await asyncio.to_thread(CliRunner().invoke, cli, argv, env=env)

    def peers(self, context: str) -> dict[str, tuple[Peer, int]]:
        """The cell's Peer records with their mod revisions, from its meshapi's cache."""
        return {
            item.key: (item.record, item.mod_revision)  # type: ignore[misc]
            for item in self.apps[context].cache.full.values()
            if item.kind is Kind.PEER
        }


@pytest.fixture
async def cells(
    pki: Pki, etcd_factory: Callable[[str], LocalEtcd], tmp_path: Path
) -> AsyncIterator[Cells]:
    c = Cells(pki, tmp_path / "meshctl.json", etcd_factory, {})
    try:
        yield c
    finally:
        for app in c.apps.values():
            await app.stop()


AgentStarter = Callable[[str, str, str], Awaitable[Agent]]


@pytest.fixture
async def agents(pki: Pki, cells: Cells) -> AsyncIterator[AgentStarter]:
    started: list[Agent] = []

    async def start(cell: str, node: str, context: str) -> Agent:
        config = AgentConfig(
            cell=cell,
            node=node,
            meshapi=f"127.0.0.1:{cells.apps[context].grpc_port}",
            tls_dir=pki.tls(cell, Role.AGENT, node=node),
            tick=0.05,
            heartbeat_timeout=3.0,
            backoff=(0.05, 0.1, 0.2),
        )
        agent = Agent(config, maps=FakeLbMaps())
        started.append(agent)
        await agent.start()
        return agent

    yield start
    for agent in started:
        await agent.stop()


def connected(agent: Agent, peer: str) -> bool:
    w = agent.watchers.get(peer)
    return w is not None and w.state is PeerState.READY


def assert_failed(result: Result, *messages: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for message in messages:
        assert message in result.stderr, result.stderr


async def test_connect_bidirectional_agents_become_ready(
    cells: Cells, agents: AgentStarter
) -> None:
    alpha = await cells.start("alpha")
    beta = await cells.start("beta")
    a1 = await agents("alpha", "a1", "alpha")
    b1 = await agents("beta", "b1", "beta")

    result = await cells.run("connect", "--context", "alpha", "--destination-context", "beta")
    assert result.exit_code == 0, result.output
    assert "Preflight passed: alpha (id 1) and beta (id 2)" in result.stdout
    assert f"cell alpha: peer beta (127.0.0.1:{beta.grpc_port}) added" in result.stdout
    assert f"cell beta: peer alpha (127.0.0.1:{alpha.grpc_port}) added" in result.stdout
    assert "Connected alpha and beta (bidirectional)." in result.stdout

    ab = cells.peers("alpha")[peer_key("alpha", "beta")][0]
    assert ab == Peer(cell="alpha", name="beta", id=2, address=f"127.0.0.1:{beta.grpc_port}")
    ba = cells.peers("beta")[peer_key("beta", "alpha")][0]
    assert ba == Peer(cell="beta", name="alpha", id=1, address=f"127.0.0.1:{alpha.grpc_port}")

    await wait_for(lambda: connected(a1, "beta") and connected(b1, "alpha"), what="peers ready")

    before = {c: cells.peers(c) for c in ("alpha", "beta")}
    again = await cells.run("connect", "--context", "alpha", "--destination-context", "beta")
    assert again.exit_code == 0, again.output
    assert "alpha and beta are already connected (bidirectional)." in again.stdout
    assert "added" not in again.stdout
    assert {c: cells.peers(c) for c in ("alpha", "beta")} == before  # not even rewritten


async def refused(cells: Cells, context: str, tls_dir: Path) -> str:
    """Watch the cell behind ``context`` with ``tls_dir``'s certificate: the refusal's message."""

    async def first_batch(client: MeshClient) -> None:
        async for _ in client.watch([Kind.SERVICE]):
            break

    async with MeshClient(f"127.0.0.1:{cells.apps[context].grpc_port}", tls_dir) as client:
        with pytest.raises(AccessDenied) as info:
            await first_batch(client)
    return str(info.value)


async def test_unicast_source_agents_read_the_destination_which_never_reads_back(
    cells: Cells, agents: AgentStarter, pki: Pki
) -> None:
    await cells.start("alpha")
    beta = await cells.start("beta")
    async with MeshClient(f"127.0.0.1:{beta.grpc_port}", pki.tls("beta", Role.ADMIN)) as admin:
        await admin.write(puts=[service("beta"), endpoint("beta", 1)])
    a1 = await agents("alpha", "a1", "alpha")
    b1 = await agents("beta", "b1", "beta")

    result = await cells.run(
        "--context", "alpha", "connect", "--destination-context", "beta",
        "--connection-mode", "unicast",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cell alpha: peer beta" in result.stdout
    assert "(unicast: alpha reads beta)" in result.stdout
    assert "cell beta: peer alpha" in result.stdout
    ab = cells.peers("alpha")[peer_key("alpha", "beta")][0]
    assert (ab.watch, ab.export) == (True, False)
    ba = cells.peers("beta")[peer_key("beta", "alpha")][0]
    assert (ba.watch, ba.export) == (False, True)

    # alpha's agent reads beta: beta's meshapi admits it, and beta's service arrives.
    ref = ServiceRef("demo", "echo")
    await wait_for(
        lambda: connected(a1, "beta") and ref in a1.watchers["beta"].cache.services,
        what="alpha's agent synced beta",
    )
    # beta's agent knows the grant but never watches alpha.
    await wait_for(lambda: "alpha" in b1.own.cache.peers, what="beta's agent saw its record")
    rounds = b1.stats.rounds
    await wait_for(lambda: b1.stats.rounds >= rounds + 10, what="ten rounds of beta's agent")
    assert b1.watchers == {}
    assert b1.ready() == (True, "ready")
    # alpha does not export to beta; beta exports to alpha only, not to gamma.
    message = await refused(cells, "alpha", pki.tls("beta", Role.AGENT, node="b1"))
    assert "cell alpha watches cell beta but does not export to it" in message
    message = await refused(cells, "beta", pki.tls("gamma", Role.AGENT, node="g1"))  # no grant
    assert "cell gamma is not a connected peer of cell beta" in message

    again = await cells.run(
        "connect", "--context", "alpha", "--destination-context", "beta",
        "--connection-mode", "unicast",
    )  # fmt: skip
    assert "alpha and beta are already connected (unicast)." in again.stdout

    gone = await cells.run(
        "disconnect", "--context", "alpha", "--destination-context", "beta",
        "--connection-mode", "unicast",
    )  # fmt: skip
    assert gone.exit_code == 0, gone.output
    assert "cell alpha: peer beta removed" in gone.stdout
    assert "cell beta: peer alpha removed" in gone.stdout
    assert cells.peers("alpha") == cells.peers("beta") == {}
    await wait_for(lambda: "beta" not in a1.watchers, what="alpha's agent drained beta")
    message = await refused(cells, "beta", pki.tls("alpha", Role.AGENT, node="a1"))
    assert "cell alpha is not a connected peer of cell beta" in message


async def test_unicast_both_ways_is_bidirectional_and_disconnect_keeps_the_other_way(
    cells: Cells,
) -> None:
    await cells.start("alpha")
    await cells.start("beta")
    unicast = ("--connection-mode", "unicast")
    assert (await cells.run("connect", "--context", "alpha", "--destination-context", "beta",
                            *unicast)).exit_code == 0  # fmt: skip
    assert (await cells.run("connect", "--context", "beta", "--destination-context", "alpha",
                            *unicast)).exit_code == 0  # fmt: skip
    for cell, other in (("alpha", "beta"), ("beta", "alpha")):
        record = cells.peers(cell)[peer_key(cell, other)][0]
        assert (record.watch, record.export) == (True, True)
    result = await cells.run(
        "disconnect", "--context", "beta", "--destination-context", "alpha", *unicast
    )
    assert result.exit_code == 0, result.output
    assert "cell beta: peer alpha kept (unicast: alpha reads beta)" in result.stdout
    ab = cells.peers("alpha")[peer_key("alpha", "beta")][0]
    assert (ab.watch, ab.export) == (True, False)
    ba = cells.peers("beta")[peer_key("beta", "alpha")][0]
    assert (ba.watch, ba.export) == (False, True)


async def test_dry_run_changes_nothing(cells: Cells) -> None:
    await cells.start("alpha")
    await cells.start("beta")
    before = {c: cells.peers(c) for c in ("alpha", "beta")}
    result = await cells.run(
        "connect", "--context", "alpha", "--destination-context", "beta", "--dry-run"
    )
    assert result.exit_code == 0, result.output
    assert "Preflight passed" in result.stdout
    assert "cell alpha: peer beta" in result.stdout
    assert "would add" in result.stdout
    assert "Dry run: nothing was changed." in result.stdout
    assert {c: cells.peers(c) for c in ("alpha", "beta")} == before == {"alpha": {}, "beta": {}}


def free_port() -> int:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("beta", "messages"),
    [
        pytest.param(
            {"pod": "10.1.128.0/17"},
            [
                "pod CIDR 10.1.0.0/16 of cell 'alpha' overlaps pod CIDR 10.1.128.0/17 of cell "
                "'beta'",
                "meshapi --pod-cidr",
            ],
            id="overlapping-pod-cidrs",
        ),
        pytest.param(
            {"nodes": "192.168.1.0/25"},
            ["node CIDR 192.168.1.0/24 of cell 'alpha' overlaps", "meshapi --node-cidr"],
            id="overlapping-node-cidrs",
        ),
        pytest.param(
            {"cell_id": 1},
            ["cells 'alpha' and 'beta' both have id 1", "another --cell-id"],
            id="duplicate-cell-id",
        ),
        pytest.param(
            {"cell": "alpha", "cell_id": 5, "pod": "10.5.0.0/16", "nodes": "192.168.5.0/24"},
            ["both reach a cell named 'alpha'", "cell names must be unique"],
            id="duplicate-cell-name",
        ),
        pytest.param(
            {"foreign": True},
            ["context 'beta' does not trust the CA of context 'alpha'", "share the mesh CA"],
            id="foreign-ca",
        ),
        pytest.param(
            {"down": True},
            ["cannot reach meshapi at 127.0.0.1:", "(context 'beta')", "check that it runs"],
            id="unreachable-meshapi",
        ),
    ],
)
async def test_preflight_refusals(
    cells: Cells, foreign_pki: Pki, beta: dict[str, Any], messages: list[str]
) -> None:
    await cells.start("alpha")
    if beta.pop("down", False):
        cells.add_context("beta", f"127.0.0.1:{free_port()}", cells.pki.tls("beta", Role.ADMIN))
    elif beta.pop("foreign", False):
        await cells.start("beta", pki=foreign_pki)
    else:
        await cells.start("beta", **beta)
    result = await cells.run("connect", "--context", "alpha", "--destination-context", "beta")
    assert_failed(result, *messages)
    assert cells.peers("alpha") == {}
    if "beta" in cells.apps:
        assert cells.peers("beta") == {}


async def test_expired_admin_certificate_is_refused(
    cells: Cells, pki: Pki, expired_admin_tls: Path
) -> None:
    await cells.start("alpha")
    await cells.start("beta")
    server = f"127.0.0.1:{cells.apps['alpha'].grpc_port}"
    cells.add_context("alpha", server, expired_admin_tls)
    result = await cells.run("connect", "--context", "alpha", "--destination-context", "beta")
    assert_failed(
        result, "the admin certificate of context 'alpha' expired at", "meshctl certs issue"
    )


async def test_expiring_server_certificate_warns(cells: Cells, pki: Pki, tmp_path: Path) -> None:
    await cells.start("alpha")
    short = tmp_path / "beta-meshapi-short"
    issue_certificate(
        ca_dir=pki.ca_dir,
        cell="beta",
        role=Role.MESHAPI,
        out_dir=short,
        days=20,
        now=datetime.now(UTC) - timedelta(days=1),
    )
    await cells.start("beta", tls_dir=short)
    result = await cells.run(
        "connect", "--context", "alpha", "--destination-context", "beta", "--dry-run"
    )
    assert result.exit_code == 0, result.output
    assert "warning: the meshapi certificate of cell 'beta'" in result.stderr
    assert "day(s)" in result.stderr
    assert "issue a new one" in result.stderr


async def test_same_context_twice_is_a_usage_error(cells: Cells) -> None:
    await cells.start("alpha")
    result = await cells.run("connect", "--context", "alpha", "--destination-context", "alpha")
    assert result.exit_code == 2, result.output
    assert "--context and --destination-context are both 'alpha'" in result.stderr


async def test_disconnect(cells: Cells) -> None:
    await cells.start("alpha")
    await cells.start("beta")
    args = ("--context", "alpha", "--destination-context", "beta")
    assert (await cells.run("connect", *args)).exit_code == 0

    result = await cells.run("disconnect", *args)
    assert result.exit_code == 0, result.output
    assert "cell alpha: peer beta removed" in result.stdout
    assert "cell beta: peer alpha removed" in result.stdout
    assert cells.peers("alpha") == {}
    assert cells.peers("beta") == {}

    again = await cells.run("disconnect", *args)
    assert again.exit_code == 0, again.output
    assert "alpha and beta are not connected; nothing to do." in again.stdout


async def test_disconnect_from_a_dead_cell(cells: Cells) -> None:
    await cells.start("alpha")
    await cells.start("beta")
    args = ("--context", "alpha", "--destination-context", "beta")
    assert (await cells.run("connect", *args)).exit_code == 0
    await cells.apps["beta"].stop()
    result = await cells.run("disconnect", *args)
    assert_failed(result, "cannot reach meshapi", "run 'meshctl disconnect' again")
    assert "cell alpha: peer beta removed" in result.stdout
    assert cells.peers("alpha") == {}
    del cells.apps["beta"]  # stopped already
