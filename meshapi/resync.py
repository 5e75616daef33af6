"""After the cell's etcd was wiped: when is each kind complete again, and what was lost (pure).

meshapi notices a wipe when its store comes back with another epoch. Its watch cache still knows
what the store held before; `WipeRecovery` keeps that memory and decides, per kind, when the
kind's sync canary may be written again — only then do the agents (own cell and peers) delete what
the new store lacks. Until then they keep their last-known-good state.

- meshapi's own kinds (cell config, heartbeat): at once, behind the re-asserted cell config.
- kinds the agents re-create (nodes, endpoints, agent status): once every node that had records
  of the kind before the wipe has registered again (its Node record — registration writes a node
  and its endpoints in one request; for agent status its AgentStatus), or after `resync_grace`.
  Endpoints also wait for the services: a peer sees only the endpoints of exported services, so
  while a service is lost its endpoints are missing from the peers' view of the cell.
- kinds only an operator writes (services, peers, identities): the records that are missing are
  *lost*; they are reported with the command that restores them, and the canary waits until each
  was written again or `lost_state_grace` has passed. Peers remembered as lost stay authorized.

Fed with the keys present now (any mapping keyed by etcd key) and the time; returns the kinds
to mark synced and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from meshcore.model import (
    AgentStatus,
    Endpoint,
    Kind,
    Node,
    Peer,
    Record,
    Service,
    agent_key,
    kind_of_key,
    node_key,
)

OWN_KINDS = frozenset({Kind.CELL, Kind.HEARTBEAT})
SOURCE_KINDS = frozenset({Kind.NODE, Kind.ENDPOINT, Kind.AGENT})
OPERATOR_KINDS = frozenset({Kind.SERVICE, Kind.PEER, Kind.IDENTITY, Kind.IP_IDENTITY})
# Evaluated in this order: a prerequisite released in a step releases its dependants with it.
CANARY_KINDS = tuple(k for k in Kind if k is not Kind.SYNCED)
PREREQUISITES = {Kind.ENDPOINT: {Kind.SERVICE}}

DEFAULT_RESYNC_GRACE = 60.0
DEFAULT_LOST_STATE_GRACE = 900.0


class Release(StrEnum):
    """Why a kind's canary was written again."""

    OWN = "own"
    RELISTED = "relisted"  # every source registered again
    RESTORED = "restored"  # the operator wrote every lost record again
    GRACE = "grace"  # the grace period ended first


@dataclass(frozen=True)
class LostRecord:
    """A record only an operator wrote, gone with the store, and how to restore it."""

    key: str
    kind: Kind
    name: str
    restore: str

    def as_json(self) -> dict[str, str]:
        return {"key": self.key, "kind": str(self.kind), "name": self.name, "restore": self.restore}


def restore_command(cell: str, record: Record) -> str:
    """The operator's command that writes `record` again."""
    if isinstance(record, Service):
        name = f"{record.namespace}/{record.name}"
        return f"meshctl --context {cell} apply -f <the manifest of {name}>"
    if isinstance(record, Peer):
        # Unicast peerings mark one side (watch/export; both true = bidirectional).
        if not record.watch:  # a grant: the peer reads this cell
            return (
                f"meshctl connect --context {record.name} --destination-context {cell} "
                "--connection-mode unicast"
            )
        mode = "" if record.export else " --connection-mode unicast"
        return f"meshctl connect --context {cell} --destination-context {record.name}{mode}"
    return f"write {kind_of_key(record.key())} record {record.key()} again (MeshAdmin.Write)"


def _name_of(record: Record) -> str:
    if isinstance(record, Service):
        return f"{record.namespace}/{record.name}"
    if isinstance(record, Peer | Node):
        return record.name
    return record.key().rsplit("/", 1)[-1]


def _node_of(record: Record) -> str | None:
    """The node that re-creates `record` (None: not a node's record)."""
    if isinstance(record, Node):
        return record.name
    if isinstance(record, Endpoint | AgentStatus):
        return record.node
    return None


@dataclass
class KindWait:
    """What a withheld kind waits for."""

    since: float
    nodes: frozenset[str] = frozenset()  # source kinds: nodes not registered again yet
    kinds: frozenset[Kind] = frozenset()  # kinds that must be complete first
    lost: tuple[LostRecord, ...] = ()  # operator kinds: records not written again yet
    grace: float = 0.0

    def as_json(self, now: float) -> dict[str, object]:
        return {
            "waiting_for_nodes": sorted(self.nodes),
            "waiting_for_kinds": sorted(str(k) for k in self.kinds),
            "lost": len(self.lost),
            "grace_left": round(max(self.since + self.grace - now, 0.0), 3),
        }


@dataclass
class WipeRecovery:
    """The memory of the store before its last wipe, and the canaries withheld since."""

    cell: str
    resync_grace: float = DEFAULT_RESYNC_GRACE
    lost_state_grace: float = DEFAULT_LOST_STATE_GRACE
    # Kinds another component re-writes and re-marks itself after a wipe (the Kubernetes
    # source): never withheld here, never reported lost.
    external_kinds: frozenset[Kind] = frozenset()
    wipes: int = field(default=0, init=False)
    released: dict[Kind, Release] = field(default_factory=dict, init=False)  # since last wipe
    _before: dict[str, Record] = field(default_factory=dict, init=False)
    _withheld: dict[Kind, KindWait] = field(default_factory=dict, init=False)
    _since: float = field(default=0.0, init=False)
    # Indexes of `_before`, built once per wipe (a step runs every 0.1 s while recovering and
    # must not rescan every remembered record): the nodes that had records of each source kind,
    # and the lost-record candidates of each operator kind, in key order.
    _expected_nodes: dict[Kind, frozenset[str]] = field(default_factory=dict, init=False)
    _candidates: dict[Kind, tuple[LostRecord, ...]] = field(default_factory=dict, init=False)

    @property
    def withheld(self) -> frozenset[Kind]:
        return frozenset(self._withheld)

    def reset(self, before: Mapping[str, Record], now: float) -> None:
        """The store was wiped; `before` is what it held (as the cache knew it)."""
        # A wipe during a recovery: what was still missing from the first one stays remembered.
        kept = {k: r for k, r in self._before.items() if kind_of_key(k) in self._withheld}
        self._before = {**kept, **before}
        self._index()
        self.wipes += 1
        self._since = now
        self.released = {}
        self._withheld = {
            kind: KindWait(since=now) for kind in CANARY_KINDS if kind not in self.external_kinds
        }

    def _index(self) -> None:
        nodes: dict[Kind, set[str]] = {kind: set() for kind in SOURCE_KINDS}
        candidates: dict[Kind, list[LostRecord]] = {kind: [] for kind in OPERATOR_KINDS}
        for key, record in sorted(self._before.items()):
            kind = kind_of_key(key)
            if kind in self.external_kinds:
                continue
            if kind in SOURCE_KINDS and (node := _node_of(record)) is not None:
                nodes[kind].add(node)
            elif kind in OPERATOR_KINDS:
                name, restore = _name_of(record), restore_command(self.cell, record)
                candidates[kind].append(LostRecord(key, kind, name, restore))
        self._expected_nodes = {kind: frozenset(n) for kind, n in nodes.items()}
        self._candidates = {kind: tuple(c) for kind, c in candidates.items()}

    def step(self, present: Mapping[str, object], now: float) -> dict[Kind, Release]:
        """The kinds whose canary may be written now, and why; they are no longer withheld."""
        out: dict[Kind, Release] = {}
        for kind in list(self._withheld):
            release = self._evaluate(kind, present, now)
            if release is not None:
                del self._withheld[kind]
                self.released[kind] = release
                out[kind] = release
        if not self._withheld:
            self._before.clear()
            self._expected_nodes, self._candidates = {}, {}
        return out

    def _evaluate(self, kind: Kind, present: Mapping[str, object], now: float) -> Release | None:
        wait = self._withheld[kind]
        if kind in OWN_KINDS:
            return Release.OWN
        if kind in SOURCE_KINDS:
            wait.grace = self.resync_grace
            wait.nodes = frozenset(self._missing_nodes(kind, present))
            wait.kinds = frozenset(PREREQUISITES.get(kind, set()) & self._withheld.keys())
            if wait.kinds:
                return None  # the prerequisite's own grace bounds this wait
            if not wait.nodes:
                return Release.RELISTED
        else:
            wait.grace = self.lost_state_grace
            wait.lost = tuple(
                lost for lost in self._candidates.get(kind, ()) if lost.key not in present
            )
            if not wait.lost:
                return Release.RESTORED
        return Release.GRACE if now - wait.since >= wait.grace else None

    def _missing_nodes(self, kind: Kind, present: Mapping[str, object]) -> set[str]:
        expected = self._expected_nodes.get(kind, frozenset())
        # A node is back with its Node record (written with its endpoints in one request);
        # for agent status, with its AgentStatus. Key lookups only: O(nodes), not O(records).
        signal = agent_key if kind is Kind.AGENT else node_key
        return {node for node in expected if signal(self.cell, node) not in present}

    def lost(self) -> list[LostRecord]:
        """Every record still lost (its kind's canary withheld), in key order."""
        return [lost for wait in self._withheld.values() for lost in wait.lost]

    def remembered_peers(self) -> dict[str, Record]:
        """Peer records lost with the store while their kind is withheld (still authorized)."""
        wait = self._withheld.get(Kind.PEER)
        if wait is None:
            return {}
        return {lost.key: self._before[lost.key] for lost in wait.lost if lost.key in self._before}

    def status(self, now: float) -> dict[str, object]:
        """The `recovery` part of meshapi's /status (and of `meshctl status`)."""
        return {
            "wipes": self.wipes,
            "recovering": bool(self._withheld),
            "since": self._since or None,
            "withheld": {str(k): w.as_json(now) for k, w in sorted(self._withheld.items())},
            "released": {str(k): str(r) for k, r in sorted(self.released.items())},
            "lost": [lost.as_json() for lost in self.lost()],
            "resync_grace": self.resync_grace,
            "lost_state_grace": self.lost_state_grace,
        }
