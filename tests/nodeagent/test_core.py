"""The agent's core without IO: `AgentCore.step(changes, peer_events, now)` on a fake clock.

No asyncio, no network: the test plays the shell — it hands the core the cells' record changes
(real records, as a `ListWatcher` would deliver them) and what each cell's watcher shows
(`WatchFacts`), moves the clock by hand, and lands the step's deltas in a real `DesiredLb`. Each
test runs in milliseconds, whatever timeouts it crosses.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, ip_network

from bpf.layout import IPPROTO_TCP
from bpf.lbstate import Frontend
from meshcore.lbpolicy import ServiceRef
from meshcore.model import (
    CellConfig,
    Heartbeat,
    Kind,
    Node,
    Record,
    SyncCanary,
    kind_of_key,
    peer_key,
)
from meshcore.watch.change import Change
from nodeagent.core import (
    AgentCore,
    CoreConfig,
    SetFrontends,
    StepResult,
    UpdateFrontend,
    WatchFacts,
    apply_desired,
)
from nodeagent.desired import DesiredLb
from nodeagent.meshview import PeerState, PeerTarget
from tests.meshapi.helpers import endpoint, peer, service

ECHO = Frontend(IPv4Address("10.96.0.10"), 80, IPPROTO_TCP)
REF = ServiceRef("demo", "echo")
WALL = 1_700_000_000.0
CONFIGS = {
    "alpha": CellConfig(name="alpha", id=1, pod_cidrs=[ip_network("10.1.0.0/16")]),
    "beta": CellConfig(name="beta", id=2, pod_cidrs=[ip_network("10.2.0.0/16")]),
}


def put(record: Record) -> Change:
    key = record.key()
    return Change(key, kind_of_key(key), record, 1)


def delete(key: str) -> Change:
    return Change(key, kind_of_key(key), None, 2)


def canaries(cell: str) -> list[Record]:
    return [SyncCanary(cell=cell, kind=k, timestamp=1.0) for k in (Kind.PEER, Kind.ENDPOINT)]


class Shell:
    """Plays the agent's shell around a core, on a fake clock."""

    def __init__(self, *, stale_ttl: float | None = None, sync_timeout: float = 60.0) -> None:
        config = CoreConfig(
            cell="alpha",
            node="a1",
            stale_ttl=stale_ttl,
            sync_timeout=sync_timeout,
            heartbeat_timeout=30.0,
        )
        self.core = AgentCore(config, PeerTarget("alpha", None, "127.0.0.1:1"))
        self.desired = DesiredLb()
        self.now = 1000.0
        self.core.start(self.now)
        self.core.view.own.cache.config = CONFIGS["alpha"]  # what the own watcher does first

    def step(
        self,
        changes: Iterable[tuple[str, Record | Change]] = (),
        facts: Iterable[WatchFacts] = (),
        *,
        advance: float = 0.0,
    ) -> StepResult:
        self.now += advance
        pairs = [(cell, c if isinstance(c, Change) else put(c)) for cell, c in changes]
        result = self.core.step(pairs, list(facts), self.now, wall=WALL)
        apply_desired(self.desired, result.desired)
        for target in result.start + [self.core.view.peers[n].target for n in result.revoke]:
            # A started watcher's config was checked and accepted.
            self.core.view.peers[target.cell].cache.config = CONFIGS[target.cell]
        return result

    def live(self, cell: str, *, synced: bool = True, streaming: bool = True) -> WatchFacts:
        """A connected watcher whose stream delivered a batch just now."""
        return WatchFacts(
            cell, connected=True, streaming=streaming, synced=synced, last_batch_at=self.now
        )

    def state(self, cell: str) -> PeerState:
        view = self.core.view.cell(cell)
        assert view is not None
        return view.state

    def wanted(self) -> dict[str, int]:
        state = self.desired.wanted
        entry = state.services.get(ECHO)
        if entry is None:
            return {}
        return {
            str(state.backends[b].address): state.backends[b].cell_id for b in entry.backend_ids
        }

    def connected(self) -> StepResult:
        """alpha (two endpoints) and its peer beta (two endpoints), both listed and ready."""
        alpha: list[Record] = [service("alpha"), endpoint("alpha", 1), endpoint("alpha", 2)]
        alpha += [peer("alpha", "beta", id_=2), *canaries("alpha")]
        first = self.step([("alpha", r) for r in alpha], [self.live("alpha")])
        assert [t.cell for t in first.start] == ["beta"]
        beta: list[Record] = [service("beta"), endpoint("beta", 1), endpoint("beta", 2)]
        beta += canaries("beta")
        beta.append(Heartbeat(cell="beta", timestamp=WALL, sequence=1))
        return self.step([("beta", r) for r in beta], [self.live("alpha"), self.live("beta")])


ALPHA = {str(endpoint("alpha", n).address): 1 for n in (1, 2)}
BETA = {str(endpoint("beta", n).address): 2 for n in (1, 2)}


def test_endpoints_and_services_added_and_deleted_become_desired_deltas() -> None:
    shell = Shell()
    result = shell.step(
        [("alpha", service("alpha")), ("alpha", endpoint("alpha", 1))], [shell.live("alpha")]
    )
    assert [type(d) for d in result.desired] == [SetFrontends]
    assert shell.wanted() == {str(endpoint("alpha", 1).address): 1}

    shell.connected()
    assert shell.state("beta") is PeerState.READY
    assert shell.wanted() == ALPHA | BETA

    # One endpoint more: an update of the frontend's selection, not a whole-service build.
    merges = shell.core.stats.merges
    result = shell.step([("beta", endpoint("beta", 3))])
    assert result.desired
    assert all(isinstance(d, UpdateFrontend) for d in result.desired)
    assert shell.core.stats.merges == merges
    assert shell.wanted() == ALPHA | BETA | {str(endpoint("beta", 3).address): 2}
    assert result.stamps == [], "an endpoint without a stamp is no propagation sample"

    shell.step([("beta", delete(endpoint("beta", 3).key()))])
    assert shell.wanted() == ALPHA | BETA

    # The service deleted here: nothing is wanted for it anymore (services have no canary
    # here, so the delete waits for one).
    shell.step([("alpha", delete(service("alpha").key()))])
    assert shell.wanted() == ALPHA | BETA, "a delete before its kind's canary is held"
    shell.step([("alpha", SyncCanary(cell="alpha", kind=Kind.SERVICE, timestamp=1.0))])
    assert shell.wanted() == {}
    assert shell.core.explain(REF) is None


def test_a_stale_peer_keeps_its_backends_and_is_revoked_after_the_ttl() -> None:
    shell = Shell(stale_ttl=5.0)
    shell.connected()
    assert shell.state("beta") is PeerState.READY

    # The stream is lost: stale at once, its last-known-good backends stay (marked stale).
    result = shell.step([], [shell.live("alpha"), shell.live("beta", streaming=False)], advance=1)
    assert shell.state("beta") is PeerState.STALE
    assert result.revoke == []
    assert shell.wanted() == ALPHA | BETA
    merged = shell.core.explain(REF)
    assert merged is not None
    assert {b.cell for f in merged.frontends for b in f.backends if b.stale} == {"beta"}

    lost = [shell.live("alpha"), WatchFacts("beta", connected=True, synced=True)]
    result = shell.step([], lost, advance=4.9)
    assert (shell.state("beta"), result.revoke) == (PeerState.STALE, []), "revoked before the TTL"
    result = shell.step([], lost, advance=0.2)
    assert result.revoke == ["beta"]
    assert shell.core.view.gone["beta"].state is PeerState.REVOKED
    assert not shell.core.view.gone["beta"].cache.endpoints
    assert shell.wanted() == ALPHA, "a revoked peer's backends leave in the same step"
    assert shell.core.ready(shell.now) == (True, "ready")

    # The fresh watcher stays revoked until it listed again; then the peer is ready again.
    result = shell.step([], [shell.live("alpha"), WatchFacts("beta", connected=True)], advance=1)
    assert shell.state("beta") is PeerState.REVOKED
    beta: list[Record] = [service("beta"), endpoint("beta", 1), endpoint("beta", 2)]
    shell.step([("beta", r) for r in canaries("beta")])
    shell.step([("beta", r) for r in beta], [shell.live("alpha"), shell.live("beta")], advance=1)
    assert shell.state("beta") is PeerState.READY
    assert shell.wanted() == ALPHA | BETA


def test_disconnect_drains_the_peer_in_one_step() -> None:
    shell = Shell()
    shell.connected()
    result = shell.step([("alpha", delete(peer_key("alpha", "beta")))], [shell.live("alpha")])
    assert result.stop == ["beta"]
    gone = shell.core.view.gone["beta"]
    assert gone.state is PeerState.DISCONNECTED
    assert not gone.cache.endpoints
    assert "beta" not in shell.core.view.peers
    assert shell.wanted() == ALPHA
    assert result.routes == {}, "nodes re-routed (beta had none)"


def test_deletes_wait_until_every_source_synced() -> None:
    shell = Shell()
    node = Node(cell="alpha", name="a2", addresses=[IPv4Address("192.168.1.2")],
                pod_cidrs=[ip_network("10.1.2.0/24")])  # fmt: skip
    alpha: list[Record] = [service("alpha"), endpoint("alpha", 1), node]
    alpha.append(peer("alpha", "beta", id_=2))
    result = shell.step([("alpha", r) for r in alpha], [shell.live("alpha", synced=False)])
    assert (result.allow_deletes, result.routes) == (False, None)
    result = shell.step([], [shell.live("alpha")])
    assert (result.allow_deletes, result.routes) == (False, None), "beta has not synced yet"
    assert shell.core.ready(shell.now) == (False, "peer beta not synced (connecting)")
    result = shell.step([], [shell.live("alpha"), shell.live("beta", synced=False)], advance=1)
    assert (result.allow_deletes, result.routes) == (False, None)
    result = shell.step([], [shell.live("alpha"), shell.live("beta")], advance=1)
    assert result.allow_deletes
    assert result.routes == {ip_network("10.1.2.0/24"): IPv4Address("192.168.1.2")}
    assert not shell.step([], [shell.live("alpha"), shell.live("beta")]).allow_deletes, "once"


def test_deletes_are_allowed_after_the_sync_timeout() -> None:
    shell = Shell(sync_timeout=60.0)
    alpha: list[Record] = [service("alpha"), endpoint("alpha", 1), peer("alpha", "beta", id_=2)]
    shell.step([("alpha", r) for r in alpha], [shell.live("alpha")])
    never = WatchFacts("beta")  # beta never answers
    assert not shell.step([], [shell.live("alpha"), never], advance=59.9).allow_deletes
    assert shell.step([], [shell.live("alpha"), never], advance=0.1).allow_deletes
    assert shell.core.ready(shell.now) == (True, "ready")


def test_heartbeat_timeout_makes_an_idle_peer_stale_but_a_long_listing_is_alive() -> None:
    shell = Shell()
    shell.step([("alpha", peer("alpha", "beta", id_=2))], [shell.live("alpha")])
    # The listing: a heartbeat first, then batches 10 s apart for 50 s (timeout: 30 s).
    beat = Heartbeat(cell="beta", timestamp=WALL, sequence=1)
    shell.step([("beta", beat)], [shell.live("alpha"), shell.live("beta", synced=False)])
    states = [shell.state("beta")]
    for i in range(5):
        shell.now += 10.0
        facts = [shell.live("alpha"), shell.live("beta", synced=i == 4)]
        shell.step([("beta", endpoint("beta", i))], facts)
        states.append(shell.state("beta"))
    assert PeerState.STALE not in states, states
    assert states[-1] is PeerState.READY

    # Idle: no batch and no heartbeat for longer than the timeout -> stale.
    quiet = WatchFacts("beta", connected=True, streaming=True, synced=True,
                       last_batch_at=shell.now)  # fmt: skip
    shell.step([], [shell.live("alpha"), quiet], advance=30.0)
    assert shell.state("beta") is PeerState.READY
    shell.step([], [shell.live("alpha"), quiet], advance=1.5)
    assert shell.state("beta") is PeerState.STALE
    # A heartbeat brings it back.
    beat = Heartbeat(cell="beta", timestamp=WALL + 40, sequence=2)
    shell.step([("beta", beat)], [shell.live("alpha"), quiet], advance=0.5)
    assert shell.state("beta") is PeerState.READY


def test_propagation_stamps_come_from_the_wall_time_passed_in() -> None:
    shell = Shell()
    shell.connected()
    fresh = endpoint("beta", 7).model_copy(update={"updated_at": WALL - 0.25})
    replay = endpoint("beta", 8).model_copy(update={"updated_at": WALL - 7200})
    result = shell.step([("beta", fresh), ("beta", replay)])
    assert result.stamps == [WALL - 0.25], "an hour-old stamp is a replay, not propagation"
