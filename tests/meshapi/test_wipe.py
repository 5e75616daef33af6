"""An etcd wipe of a running cell (real etcd stopped, its data dir emptied, restarted on the same
port), with real meshapis and in-process agents (`AgentApp` over `FakeLbMaps`, registering their
node and workloads through the own meshapi).

What must hold: the cell's own agents keep their peers, services, nodes and backends throughout
(no drain, no held delete released); they register again by themselves; meshapi writes the node /
endpoint canaries only once every node that was registered before has registered again; the
services and peers only an operator wrote are reported lost (/status, /metrics) with the command
that restores them, their canaries withheld until restored or until the lost-state grace ends;
peers lost with the store stay authorized meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address, ip_network
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bpf.fakemaps import FakeLbMaps
from bpf.layout import IPPROTO_TCP
from bpf.lbmaps import LbMaps
from bpf.lbstate import Frontend
from certs import Role
from meshapi.app import MeshApiApp, MeshApiConfig
from meshcore.client import AccessDenied, MeshClient
from meshcore.localetcd import LocalEtcd
from meshcore.model import Kind, Node, node_key, synced_key
from nodeagent.app import AgentApp
from nodeagent.cellcache import GATED_KINDS
from nodeagent.registration import Registrar
from tests.conftest import CELL_CIDRS, CELL_IDS, Pki, wait_for
from tests.meshapi.helpers import endpoint, peer, service
from tests.nodeagent.conftest import BETA_ENDPOINTS, Mesh, agent_config
from tests.nodeagent.conftest import mesh as mesh  # the two-cell fixture, re-exported here

ECHO = Frontend(IPv4Address("10.96.0.10"), 80, IPPROTO_TCP)
NODES = {"a1": 1, "a2": 2}
# Every alpha backend is registered by an agent: 10.1.<n>.5 on node a<n>.
EXPECTED = {f"10.1.{n}.5": 1 for n in NODES.values()} | {
    str(endpoint("beta", n).address): 2 for n in BETA_ENDPOINTS
}


def served(maps: LbMaps) -> dict[str, int]:
    """Backend address -> cell id of the echo frontend, read from the maps themselves."""
    contents = maps.contents()
    for svc in contents.services:
        if svc.frontend == ECHO:
            return {
                str(contents.backends[b].address): contents.backends[b].cell_id
                for b in svc.backend_ids
            }
    return {}


def workloads(tmp_path: Path, node: str) -> Path:
    path = tmp_path / f"{node}-workloads.json"
    address = f"10.1.{NODES[node]}.5"
    path.write_text(
        json.dumps(
            {
                "endpoints": [
                    {"namespace": "demo", "service": "echo", "address": address,
                     "ports": [{"name": "http", "port": 8080}], "ready": True}
                ]
            }
        )
    )  # fmt: skip
    return path


class Agents:
    def __init__(self, pki: Pki, mesh: Mesh, tmp_path: Path) -> None:
        self.pki, self.mesh, self.tmp_path = pki, mesh, tmp_path
        self.running: dict[str, AgentApp] = {}

    async def start(self, node: str) -> AgentApp:
        n = NODES[node]
        config = agent_config(
            self.pki, self.mesh, node=node, tls_dir=self.pki.tls("alpha", Role.AGENT, node=node)
        )
        registrar = Registrar(
            cell="alpha",
            node=node,
            addresses=[f"192.168.1.{10 + n}"],
            pod_cidrs=[f"10.1.{n}.0/24"],
            workloads=workloads(self.tmp_path, node),
        )
        app = AgentApp(
            config,
            http="127.0.0.1:0",
            registrar=registrar,
            maps=FakeLbMaps(),
            register_interval=0.1,
            status_interval=0.5,
        )
        self.running[node] = app
        await app.start()
        return app

    async def stop(self, node: str) -> None:
        await self.running.pop(node).stop()


@pytest.fixture
async def agents(pki: Pki, mesh: Mesh, tmp_path: Path) -> AsyncIterator[Agents]:
    a = Agents(pki, mesh, tmp_path)
    try:
        yield a
    finally:
        for node in list(a.running):
            await a.stop(node)


async def http_json(port: int, path: str) -> Any:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        assert resp.status == 200, await resp.text()
        return json.loads(await resp.text())


async def metrics_text(port: int) -> str:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        return await resp.text()


def canary_in(app: MeshApiApp, kind: Kind) -> bool:
    return synced_key(app.config.cell, kind) in app.cache.full


async def test_wipe_keeps_the_datapath_and_withholds_canaries_until_sources_and_operator_return(
    pki: Pki, mesh: Mesh, agents: Agents
) -> None:
    alpha = mesh.alpha.app
    assert alpha is not None
    # Every alpha backend comes from an agent's registration (the fixture's admin-written one
    # on a node without agent goes).
    await mesh.alpha.write(deletes=[endpoint("alpha", 1).key()])
    a1 = await agents.start("a1")
    await agents.start("a2")
    agent = a1.agent
    assert agent is not None
    own = agent.own.cache

    def registered() -> bool:
        nodes = {k for k, it in alpha.cache.full.items() if it.kind is Kind.NODE}
        statuses = {k for k, it in alpha.cache.full.items() if it.kind is Kind.AGENT}
        return served(agent.maps) == EXPECTED and len(nodes) == 2 and len(statuses) == 2

    await wait_for(registered, timeout=20, what="both nodes registered, backends served")
    await agents.stop("a2")  # stop is not remove: its records stay, it will not re-register
    epoch = alpha.cache.epoch

    def intact() -> None:
        assert served(agent.maps) == EXPECTED, "a backend left during the wipe"
        assert set(agent.watchers) == {"beta"}, "a peer was drained"
        assert not agent.gone, "a peer was drained"
        assert set(own.peers) == {"beta"}
        assert set(own.nodes) == {"a1", "a2"}
        assert {(r.namespace, r.name) for r in own.services.values()} == {("demo", "echo")}
        assert own.stats.released_deletes == 0, "a held delete was released"

    await mesh.alpha.wipe_etcd()

    def a1_registered_again() -> bool:
        intact()
        full = alpha.cache.full
        return (
            alpha.cache.epoch != epoch
            and node_key("alpha", "a1") in full
            and any(it.kind is Kind.ENDPOINT for it in full.values())
            and own.held_deletes > 0  # the agent relisted the new store and holds its deletes
        )

    await wait_for(a1_registered_again, timeout=20, what="a1 noticed the wipe, registered again")
    steps = alpha.recovery.steps

    def canaries_still_withheld() -> bool:
        intact()
        for kind in (Kind.NODE, Kind.ENDPOINT, Kind.SERVICE, Kind.PEER):
            assert not canary_in(alpha, kind), f"{kind} canary written before its sources"
        return alpha.recovery.steps >= steps + 20

    await wait_for(canaries_still_withheld, timeout=20, what="20 recovery steps")
    assert canary_in(alpha, Kind.CELL)
    assert canary_in(alpha, Kind.HEARTBEAT)

    status = await http_json(alpha.http_port, "/status")
    recovery = status["recovery"]
    assert recovery["recovering"] is True
    assert recovery["wipes"] == 1
    assert recovery["withheld"]["nodes"]["waiting_for_nodes"] == ["a2"]
    assert {r["name"]: r["restore"] for r in recovery["lost"]} == {
        "demo/echo": "meshctl --context alpha apply -f <the manifest of demo/echo>",
        "beta": "meshctl connect --context alpha --destination-context beta",
    }
    text = await metrics_text(alpha.http_port)
    assert 'meshapi_lost_records{kind="services"} 1.0' in text
    assert 'meshapi_lost_records{kind="peers"} 1.0' in text
    assert 'meshapi_withheld_canaries{kind="nodes"} 1.0' in text

    # A peer lost with the store stays authorized: beta's agents keep reading alpha.
    async with MeshClient(mesh.alpha.address, pki.tls("beta", Role.AGENT, node="b1")) as b1:
        assert (await b1.get_cell()).config.name == "alpha"

    await agents.start("a2")  # the last source registers again: nodes and endpoints complete

    def sources_complete() -> bool:
        intact()
        for kind in (Kind.SERVICE, Kind.PEER, Kind.ENDPOINT):
            # Endpoints wait for the services too: peers see only exported services' endpoints.
            assert not canary_in(alpha, kind), f"{kind} canary before the operator restored"
        return canary_in(alpha, Kind.NODE) and canary_in(alpha, Kind.AGENT)

    await wait_for(sources_complete, timeout=20, what="node/agent canaries after a2 returned")
    status = await http_json(alpha.http_port, "/status")
    assert status["recovery"]["withheld"]["endpoints"]["waiting_for_kinds"] == ["services"]

    # The operator restores what only they had written (as `meshctl apply` / `connect` would).
    await mesh.alpha.write(
        puts=[service("alpha"), peer("alpha", "beta", id_=mesh.beta.id, address=mesh.beta.address)]
    )

    def complete() -> bool:
        intact()
        return own.synced_kinds >= GATED_KINDS and own.held_deletes == 0

    await wait_for(complete, timeout=20, what="every canary back in the agent's cache")
    status = await http_json(alpha.http_port, "/status")
    assert status["recovery"]["recovering"] is False
    assert status["recovery"]["lost"] == []
    assert status["recovery"]["released"]["services"] == "restored"
    assert status["recovery"]["released"]["nodes"] == "relisted"
    assert status["recovery"]["released"]["endpoints"] == "relisted"
    intact()


@pytest.fixture
async def graceful_alpha(
    pki: Pki, etcd_factory: Callable[[str], LocalEtcd]
) -> AsyncIterator[tuple[MeshApiApp, LocalEtcd]]:
    """alpha's meshapi with short wipe graces (resync 0.5 s, lost state 2 s)."""
    etcd = await asyncio.to_thread(etcd_factory, "alpha")
    pod, nodes = CELL_CIDRS["alpha"]
    app = MeshApiApp(
        MeshApiConfig(
            cell="alpha",
            cell_id=CELL_IDS["alpha"],
            pod_cidrs=(ip_network(pod),),
            node_cidrs=(ip_network(nodes),),
            etcd_endpoints=(etcd.endpoint,),
            listen="127.0.0.1:0",
            tls_dir=pki.tls("alpha", Role.MESHAPI),
            http="127.0.0.1:0",
            heartbeat_interval=0.2,
            resync_grace=0.5,
            lost_state_grace=2.0,
        )
    )
    try:
        await app.start()
        await app.wait_ready()
        yield app, etcd
    finally:
        await app.stop()


async def test_lost_state_grace_ends_the_hold_and_the_authorization(
    pki: Pki, graceful_alpha: tuple[MeshApiApp, LocalEtcd]
) -> None:
    app, etcd = graceful_alpha
    address = f"127.0.0.1:{app.grpc_port}"
    async with MeshClient(address, pki.tls("alpha", Role.ADMIN)) as admin:
        await admin.write(
            puts=[
                service("alpha"),
                peer("alpha", "beta", id_=2),
                Node(cell="alpha", name="n1", addresses=["192.168.1.9"], pod_cidrs=["10.1.9.0/24"]),
                endpoint("alpha", 1, node="n1"),
            ]
        )
    epoch = app.cache.epoch
    await asyncio.to_thread(etcd.wipe)
    await asyncio.to_thread(etcd.start)
    await wait_for(
        # The new epoch is set before the relist of the new store: wait for the recovery too.
        lambda: (
            app.cache.epoch != epoch and app.recovery.core.withheld and canary_in(app, Kind.CELL)
        ),
        timeout=20,
        what="the wipe noticed, the cell config written again",
    )

    # Within the grace: lost, withheld, and beta's agents still admitted.
    assert not canary_in(app, Kind.SERVICE)
    assert not canary_in(app, Kind.PEER)
    assert {r.name for r in app.recovery.core.lost()} == {"demo/echo", "beta"}
    async with MeshClient(address, pki.tls("beta", Role.AGENT, node="b1")) as b1:
        assert (await b1.get_cell()).config.name == "alpha"

    # Node n1 has no agent that registers it again: the resync grace ends the wait for it.
    await wait_for(lambda: canary_in(app, Kind.NODE), timeout=20, what="the node canary")
    assert app.recovery.core.released[Kind.NODE] == "grace"
    assert not canary_in(app, Kind.SERVICE), "lost state waits longer than the resync grace"
    assert not canary_in(app, Kind.ENDPOINT), "endpoints wait for the lost services"

    await wait_for(
        lambda: all(canary_in(app, k) for k in (Kind.SERVICE, Kind.PEER, Kind.ENDPOINT)),
        timeout=20,
        what="the canaries after the lost-state grace",
    )
    assert app.recovery.core.released[Kind.PEER] == "grace"
    assert app.recovery.core.released[Kind.ENDPOINT] == "grace"
    assert app.recovery.core.lost() == []
    status = await http_json(app.http_port, "/status")
    assert status["recovery"]["lost"] == []
    assert status["recovery"]["recovering"] is False
    assert 'meshapi_lost_records{kind="peers"} 0.0' in await metrics_text(app.http_port)
    async with MeshClient(address, pki.tls("beta", Role.AGENT, node="b1")) as b1:
        with pytest.raises(AccessDenied, match="not a connected peer"):
            await b1.get_cell()
