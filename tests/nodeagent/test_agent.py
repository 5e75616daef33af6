"""The node agent end to end: two cells (real etcd, meshapi, mTLS), an in-process agent of alpha.

What an operator of ClusterMesh expects of a peer: its endpoints reach the maps; a dead peer keeps
its last-known-good backends; a wiped peer shrinks nothing before its new sync canary; disconnect
drains at once; the opt-in stale TTL revokes; garbage is counted and dropped; /status and /metrics
say all of it. Maps are `FakeLbMaps`, read back through `contents()` / `dump()` (the maps
themselves, not the agent's view of them).
"""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Address

import aiohttp

from bpf.fakemaps import FakeLbMaps
from bpf.layout import IPPROTO_TCP
from bpf.lbmaps import LbMaps
from bpf.lbstate import Frontend, LbDiff, LbState
from meshcore.model import Endpoint, Kind, Node, encode_record, peer_key
from meshcore.watch.listwatch import WatchState
from nodeagent.agent import Agent
from nodeagent.app import AgentApp
from nodeagent.peers import PeerState
from tests.conftest import Pki, wait_for
from tests.meshapi.helpers import endpoint, peer, service
from tests.nodeagent.conftest import (
    ALPHA_ENDPOINTS,
    BETA_ENDPOINTS,
    AgentFactory,
    Mesh,
    agent_config,
)

ECHO = Frontend(IPv4Address("10.96.0.10"), 80, IPPROTO_TCP)


def addr(cell: str, n: int) -> str:
    return str(endpoint(cell, n).address)


ALPHA = {addr("alpha", n): 1 for n in ALPHA_ENDPOINTS}
BETA = {addr("beta", n): 2 for n in BETA_ENDPOINTS}
BOTH = ALPHA | BETA


def served(maps: LbMaps, frontend: Frontend = ECHO) -> dict[str, int]:
    """Backend address -> cell id of a frontend, read from the maps themselves."""
    contents = maps.contents()
    for svc in contents.services:
        if svc.frontend == frontend:
            return {
                str(contents.backends[b].address): contents.backends[b].cell_id
                for b in svc.backend_ids
            }
    return {}


def wanted(state: LbState, frontend: Frontend = ECHO) -> dict[str, int]:
    """The same, from a state (the agent's desired state)."""
    entry = state.services.get(frontend)
    if entry is None:
        return {}
    return {str(state.backends[b].address): state.backends[b].cell_id for b in entry.backend_ids}


def assert_no_orphans(maps: LbMaps) -> None:
    """Every backend in the maps is used by some service (drained backends really left)."""
    contents = maps.contents()
    used = {b for svc in contents.services for b in svc.backend_ids}
    assert set(contents.backends) == used, maps.dump()


def beta_state(agent: Agent, state: PeerState) -> bool:
    w = agent.watchers.get("beta")
    return w is not None and w.state is state


def stale_cells(agent: Agent) -> set[str]:
    """Cells whose merged backends are marked stale (in the full merge `explain` gives)."""
    return {
        b.cell
        for ref in agent.selections
        for merged in [agent.explain(ref)]
        if merged is not None
        for f in merged.frontends
        for b in f.backends
        if b.stale
    }


class RecordingMaps(FakeLbMaps):
    """FakeLbMaps that records, after every write, what the echo frontend serves."""

    def __init__(self) -> None:
        super().__init__()
        self.observed: list[dict[str, int]] = []

    def apply(self, diff: LbDiff) -> None:
        try:
            super().apply(diff)
        finally:
            self.observed.append(served(self))


async def test_peer_endpoint_reaches_desired_state_and_maps_and_leaves_on_delete(
    mesh: Mesh, agent_factory: AgentFactory
) -> None:
    agent = await agent_factory()
    await wait_for(lambda: served(agent.maps) == BOTH, what="both cells' backends in the maps")
    assert agent.watchers["beta"].state is PeerState.READY
    assert agent.ready() == (True, "ready")

    new = endpoint("beta", 7)
    await mesh.beta.write(puts=[new])
    await wait_for(lambda: addr("beta", 7) in served(agent.maps), what="new beta backend")
    assert wanted(agent.desired.wanted) == served(agent.maps) == {**BOTH, addr("beta", 7): 2}
    assert f"{addr('beta', 7)}:8080/tcp cell=2 " in agent.maps.dump()
    merged = agent.explain(next(iter(agent.selections)))
    assert merged is not None
    assert {str(b.address) for f in merged.frontends for b in f.backends} == set(BOTH) | {
        addr("beta", 7)
    }

    await mesh.beta.write(deletes=[new.key()])
    await wait_for(lambda: served(agent.maps) == BOTH, what="deleted beta backend gone")
    assert wanted(agent.desired.wanted) == BOTH
    assert addr("beta", 7) not in agent.maps.dump()
    assert_no_orphans(agent.maps)


async def test_dead_peer_keeps_backends_and_resumes_without_stale_entries(
    mesh: Mesh, agent_factory: AgentFactory
) -> None:
    agent = await agent_factory()
    await wait_for(lambda: served(agent.maps) == BOTH, what="initial backends")
    beta = agent.watchers["beta"]

    await mesh.beta.stop()
    await wait_for(lambda: beta.state is PeerState.STALE, what="beta stale")
    # While beta is down, one of its endpoints goes away underneath it.
    gone = endpoint("beta", 2)
    await mesh.beta.write_etcd(deletes=[gone.key()])
    rounds = agent.stats.rounds
    await wait_for(lambda: agent.stats.rounds >= rounds + 5, what="a few agent rounds")
    assert beta.state is PeerState.STALE
    assert served(agent.maps) == BOTH, "a stale peer keeps its last-known-good backends"
    assert beta.last_error_class is not None
    assert stale_cells(agent) == {"beta"}, "the merge marks a stale peer's backends"

    await mesh.beta.start()
    await wait_for(lambda: beta.state is PeerState.READY, what="beta ready again")
    expected = {a: c for a, c in BOTH.items() if a != str(gone.address)}
    await wait_for(lambda: served(agent.maps) == expected, what="the delete applied")
    assert wanted(agent.desired.wanted) == expected
    assert beta.watcher is not None
    assert beta.watcher.stats.listings == 1, "a restarted meshapi is resumed, not relisted"
    assert beta.cache.held_deletes == 0
    assert beta.stale_since is None
    assert stale_cells(agent) == set()
    assert_no_orphans(agent.maps)


async def test_wiped_peer_shrinks_nothing_before_its_new_sync_canary(
    mesh: Mesh, agent_factory: AgentFactory
) -> None:
    maps = RecordingMaps()
    agent = await agent_factory(maps=maps)
    await wait_for(lambda: served(maps) == BOTH, what="initial backends")
    beta = agent.watchers["beta"]
    assert beta.watcher is not None
    listings = beta.watcher.stats.listings

    await mesh.beta.stop()
    await mesh.beta.wipe_etcd()
    # The wiped cell comes back with only part of its state (the source re-registers one
    # endpoint) and, held back here, without its sync canaries.
    kept = endpoint("beta", 1)
    await mesh.beta.write_etcd(
        puts=[
            service("beta"),
            peer("beta", "alpha", id_=mesh.alpha.id, address=mesh.alpha.address),
            kept,
        ]
    )
    maps.observed.clear()
    await mesh.beta.start(hold_canaries=True)

    def relisted_and_holding() -> bool:
        assert beta.watcher is not None
        assert served(maps) == BOTH, "a backend left before the new sync canary"
        return (
            beta.watcher.stats.listings > listings
            and beta.watcher.state is WatchState.WATCHING
            and beta.cache.held_deletes >= len(BETA_ENDPOINTS) - 1
        )

    await wait_for(relisted_and_holding, what="beta relisted, deletes held")
    assert Kind.ENDPOINT not in beta.cache.synced_kinds
    assert beta.watcher.stats.relists >= 1, "the wiped store's new epoch forces a relist"
    rounds = agent.stats.rounds

    def rounds_later() -> bool:
        assert served(maps) == BOTH, "a backend left before the new sync canary"
        return agent.stats.rounds >= rounds + 5

    await wait_for(rounds_later, what="a few agent rounds")
    assert agent.reconciler.deletes_allowed, "the hold is the canary's, not the start-up gate"
    assert served(maps) == BOTH
    assert wanted(agent.desired.wanted) == BOTH
    assert all(seen == BOTH for seen in maps.observed), maps.observed

    await mesh.beta.release_canaries()
    expected = ALPHA | {str(kept.address): 2}
    await wait_for(lambda: served(maps) == expected, what="unlisted backends gone after canary")
    assert Kind.ENDPOINT in beta.cache.synced_kinds
    assert beta.cache.held_deletes == 0
    assert beta.state is PeerState.READY
    assert wanted(agent.desired.wanted) == expected
    assert_no_orphans(maps)


async def test_disconnect_drains_the_peer_at_once(mesh: Mesh, agent_factory: AgentFactory) -> None:
    maps = RecordingMaps()
    agent = await agent_factory(maps=maps)
    await wait_for(lambda: served(agent.maps) == BOTH, what="initial backends")
    beta = agent.watchers["beta"]
    maps.observed.clear()

    await mesh.alpha.write(deletes=[peer_key("alpha", "beta")])
    await wait_for(lambda: "beta" not in agent.watchers, what="beta watcher removed")
    await wait_for(lambda: served(agent.maps) == ALPHA, what="beta backends drained")
    assert maps.observed[0] == ALPHA, "drained in one pass, not one backend at a time"
    assert agent.gone["beta"] is beta
    assert beta.state is PeerState.DISCONNECTED
    assert not beta.cache.endpoints
    assert not beta.cache.services
    assert wanted(agent.desired.wanted) == ALPHA
    assert_no_orphans(agent.maps)
    # beta itself is fine: this was a disconnect, not an outage.
    assert mesh.beta.app is not None
    rounds = agent.stats.rounds
    await wait_for(lambda: agent.stats.rounds >= rounds + 3, what="a few agent rounds")
    assert beta.state is PeerState.DISCONNECTED
    assert served(agent.maps) == ALPHA


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def test_stale_ttl_revokes_then_a_returning_peer_is_ready_again(pki: Pki, mesh: Mesh) -> None:
    """Real etcd and meshapi; the agent's clock (peer liveness, stale TTL) is a fake one, so the
    TTL passes when the test moves it, not by waiting."""
    clock = FakeClock()
    agent = Agent(agent_config(pki, mesh, stale_ttl=1.0), maps=FakeLbMaps(), clock=clock)
    await agent.start()
    try:
        await wait_for(lambda: served(agent.maps) == BOTH, what="initial backends")

        await mesh.beta.stop()
        await wait_for(lambda: beta_state(agent, PeerState.STALE), what="beta stale")
        stale_at = clock()
        assert served(agent.maps) == BOTH
        clock.advance(0.5)  # half the TTL: a few rounds later, still stale (not revoked)
        rounds = agent.stats.rounds
        await wait_for(lambda: agent.stats.rounds >= rounds + 3, what="a few agent rounds")
        assert beta_state(agent, PeerState.STALE), "revoked before the TTL"
        clock.advance(0.5)  # the TTL has passed since beta went stale
        await wait_for(lambda: beta_state(agent, PeerState.REVOKED), what="beta revoked", timeout=5)
        assert clock() - stale_at >= 0.9, "revoked before the TTL"
        await wait_for(lambda: served(agent.maps) == ALPHA, what="revoked backends removed")
        assert agent.gone["beta"].state is PeerState.REVOKED
        assert_no_orphans(agent.maps)
        assert agent.ready() == (True, "ready"), "a peer that is down does not make us unready"

        await mesh.beta.start()
        await wait_for(lambda: beta_state(agent, PeerState.READY), what="beta ready again")
        await wait_for(lambda: served(agent.maps) == BOTH, what="beta backends back")
        assert wanted(agent.desired.wanted) == BOTH
        assert stale_cells(agent) == set()
    finally:
        await agent.stop()


async def test_invalid_peer_records_are_counted_and_dropped_the_rest_applied(
    mesh: Mesh, agent_factory: AgentFactory
) -> None:
    agent = await agent_factory()
    await wait_for(lambda: served(agent.maps) == BOTH, what="initial backends")
    beta = agent.watchers["beta"]
    assert beta.watcher is not None

    bad_port = json.loads(encode_record(endpoint("beta", 20)))
    bad_port["ports"][0]["port"] = 0
    spoofed = Endpoint(
        cell="alpha",
        namespace="demo",
        service="echo",
        address=IPv4Address("10.1.0.99"),
        ports=endpoint("beta", 1).ports,
    )
    outside = endpoint("beta", 1).model_copy(update={"address": IPv4Address("10.9.0.1")})
    node_outside = Node(
        cell="beta", name="b9", addresses=[IPv4Address("192.168.2.9")], pod_cidrs=["10.3.0.0/24"]
    )
    # Written straight into beta's etcd: meshapi only checks that a record parses and belongs
    # at its key (bad port: dropped there); whether it belongs to beta is the agent's check.
    among = endpoint("beta", 31)  # a valid record in the same write as the garbage
    await mesh.beta.write_etcd(
        puts=[service("alpha"), spoofed, outside, node_outside, among],
        raw=[(endpoint("beta", 20).key(), json.dumps(bad_port).encode())],
    )
    valid = endpoint("beta", 30)
    await mesh.beta.write(puts=[valid])
    expected = {**BOTH, str(valid.address): 2, str(among.address): 2}
    await wait_for(lambda: served(agent.maps) == expected, what="the valid record applied")
    # The stream is ordered: the bad records arrived before the valid one.
    assert dict(beta.watcher.stats.bad_records) == {"services": 1, "endpoints": 2, "nodes": 1}
    assert mesh.beta.app is not None
    assert mesh.beta.app.cache.stats.bad_records["endpoints"] == 1  # the bad port
    assert wanted(agent.desired.wanted) == expected
    dump = agent.maps.dump()
    for address in ("10.1.0.99", "10.9.0.1", str(endpoint("beta", 20).address)):
        assert address not in dump
    assert "b9" not in beta.cache.nodes
    assert beta.state is PeerState.READY
    own = agent.own.watcher
    assert own is not None
    assert not own.stats.bad_records
    assert agent.own.cache.services  # alpha's own service untouched by beta's spoof


async def http_get(session: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.text()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


async def test_http_status_and_metrics_per_peer(pki: Pki, mesh: Mesh) -> None:
    app = AgentApp(agent_config(pki, mesh), http="127.0.0.1:0", maps=FakeLbMaps())
    await app.start()
    try:
        agent = app.agent
        assert agent is not None
        await wait_for(lambda: served(agent.maps) == BOTH, what="initial backends")
        fresh = endpoint("beta", 9).model_copy(update={"updated_at": time.time()})
        await mesh.beta.write(puts=[fresh])
        await wait_for(lambda: agent.stats.propagation.samples >= 1, what="propagation sample")

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            code, text = await http_get(session, app.http_port, "/status")
            assert code == 200
            status = json.loads(text)
            assert status["ready"] is True
            assert status["own"]["state"] == "ready"
            beta = status["peers"]["beta"]
            assert beta["state"] == "ready"
            assert beta["cell_id"] == 2
            assert beta["address"] == mesh.beta.address
            assert beta["counts"]["endpoints"] == len(BETA_ENDPOINTS) + 1
            assert beta["counts"]["services"] == 1
            assert beta["last_error_class"] is None
            assert status["maps"]["backends"] == len(BOTH) + 1

            code, text = await http_get(session, app.http_port, "/metrics")
            assert code == 200
            assert 'nodeagent_peer_state{peer="beta",state="ready"} 1.0' in text
            assert 'nodeagent_peer_state{peer="alpha",state="ready"} 1.0' in text
            assert metric(text, "nodeagent_propagation_seconds_count") >= 1
            assert 'nodeagent_propagation_seconds_bucket{le="+Inf"}' in text
            assert (await http_get(session, app.http_port, "/readyz"))[0] == 200

            await mesh.beta.stop()
            await wait_for(lambda: beta_state(agent, PeerState.STALE), what="beta stale")
            status = json.loads((await http_get(session, app.http_port, "/status"))[1])
            beta = status["peers"]["beta"]
            assert beta["state"] == "stale"
            assert beta["last_error_class"] == "tcp"
            assert beta["last_error"]
            assert beta["counts"]["endpoints"] == len(BETA_ENDPOINTS) + 1  # last-known-good
            _, text = await http_get(session, app.http_port, "/metrics")
            assert 'nodeagent_peer_state{peer="beta",state="stale"} 1.0' in text
            assert 'nodeagent_peer_state{peer="beta",state="ready"} 0.0' in text
            # A stale peer does not make the agent unready: its last-known-good state serves.
            assert (await http_get(session, app.http_port, "/readyz"))[0] == 200
    finally:
        await app.stop()
