"""`CellCache`: one cell's records as the agent uses them — validated, indexed, last-known-good.

Flow: a `ListWatcher` (meshcore.watch) streams a cell's records → `validate` checks each one
against the cell (a peer may only speak for itself: `check_record_owner`) → `apply` indexes it by
service / node and returns what it touched (`Touched`). Nothing here does IO.

Deletes of a kind are **gated on that kind's sync canary**: while the cell has no canary for a
kind (never had one, or its canary vanished in a relist after the peer's etcd was wiped) a delete
is held and the record stays (last-known-good). When the canary arrives, the held deletes of that
kind land, except for keys put again meanwhile. `drain()` empties the cache at once (disconnect,
revocation).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from meshcore.lbpolicy import ServiceRef
from meshcore.model import (
    CellConfig,
    Endpoint,
    Heartbeat,
    Kind,
    Node,
    Peer,
    Record,
    RecordError,
    Service,
    SyncCanary,
    check_record_owner,
    kind_of_key,
)
from meshcore.watch.change import Change

# Kinds whose deletes wait for the kind's canary (the cell's own config and heartbeat are
# singletons that never shrink a backend set).
GATED_KINDS = frozenset(Kind) - {Kind.CELL, Kind.HEARTBEAT, Kind.SYNCED}


@dataclass
class Touched:
    """What one or more changes touched, for the agent to re-merge / re-route."""

    services: set[ServiceRef] = field(default_factory=set)  # re-merge the whole service
    endpoints: set[tuple[ServiceRef, str]] = field(default_factory=set)  # (ref, address) changed
    nodes: bool = False
    peers: bool = False
    heartbeat: bool = False
    stamps: list[float] = field(default_factory=list)  # updated_at of changed endpoints

    def __bool__(self) -> bool:
        changed = bool(self.services) or bool(self.endpoints)
        return changed or self.nodes or self.peers or self.heartbeat


@dataclass
class CellCacheStats:
    applied: int = 0
    held_deletes: int = 0
    released_deletes: int = 0


class CellCache:
    """The records of one cell; `config` set once the cell's config was checked on connect."""

    def __init__(self, cell: str, *, on_touch: Callable[[str, Touched], None] | None = None):
        self.cell = cell
        self.config: CellConfig | None = None
        self.services: dict[ServiceRef, Service] = {}
        self.endpoints: dict[ServiceRef, dict[str, Endpoint]] = {}
        self.nodes: dict[str, Node] = {}
        self.peers: dict[str, Peer] = {}
        self.heartbeat: Heartbeat | None = None
        self.synced_kinds: set[Kind] = set()
        self.counts: Counter[Kind] = Counter()
        self.stats = CellCacheStats()
        self._records: dict[str, Record] = {}
        self._held: dict[Kind, set[str]] = {}
        self._on_touch = on_touch

    # validation (the ListWatcher's validate hook) ------------------------------------

    def validate(self, key: str, record: Record) -> None:
        """Raise RecordError unless the record belongs to this cell (and its CIDRs)."""
        if record.cell != self.cell:
            raise RecordError(key, f"cell {self.cell!r} serves a record of cell {record.cell!r}")
        if self.config is not None:
            check_record_owner(record, self.config)

    # changes ----------------------------------------------------------------------------

    def apply(self, change: Change) -> Touched:
        """Apply one change; what it touched (also given to ``on_touch``, if any)."""
        touched = Touched()
        self._apply(change, touched)
        if touched and self._on_touch is not None:
            self._on_touch(self.cell, touched)
        return touched

    def _apply(self, change: Change, touched: Touched) -> None:
        self.stats.applied += 1
        kind = change.kind
        if change.record is None:
            if kind in GATED_KINDS and kind not in self.synced_kinds:
                if change.key in self._records:
                    self._held.setdefault(kind, set()).add(change.key)
                    self.stats.held_deletes += 1
                return
            self._remove(change.key, touched)
            return
        self._held.get(kind, set()).discard(change.key)
        self._store(change.key, change.record, touched)

    def _store(self, key: str, record: Record, touched: Touched) -> None:
        old = self._records.get(key)
        self._records[key] = record
        if old is None:
            self.counts[kind_of_key(key)] += 1
        if isinstance(record, Service):
            ref = ServiceRef(record.namespace, record.name)
            self.services[ref] = record
            touched.services.add(ref)
        elif isinstance(record, Endpoint):
            ref = ServiceRef(record.namespace, record.service)
            address = str(record.address)
            self.endpoints.setdefault(ref, {})[address] = record
            touched.endpoints.add((ref, address))
            touched.stamps.append(record.updated_at)
        elif isinstance(record, Node):
            self.nodes[record.name] = record
            touched.nodes = True
        elif isinstance(record, Peer):
            self.peers[record.name] = record
            touched.peers = True
        elif isinstance(record, Heartbeat):
            self.heartbeat = record
            touched.heartbeat = True
        elif isinstance(record, SyncCanary):
            self.synced_kinds.add(record.kind)
            for held in sorted(self._held.pop(record.kind, set())):
                self.stats.released_deletes += 1
                self._remove(held, touched)
        elif isinstance(record, CellConfig):
            pass  # checked on connect; a changed id is refused by validate()

    def _remove(self, key: str, touched: Touched) -> None:
        record = self._records.pop(key, None)
        if record is None:
            return
        self.counts[kind_of_key(key)] -= 1
        if isinstance(record, Service):
            ref = ServiceRef(record.namespace, record.name)
            self.services.pop(ref, None)
            touched.services.add(ref)
        elif isinstance(record, Endpoint):
            ref = ServiceRef(record.namespace, record.service)
            address = str(record.address)
            by_address = self.endpoints.get(ref, {})
            by_address.pop(address, None)
            if not by_address:
                self.endpoints.pop(ref, None)
            touched.endpoints.add((ref, address))
        elif isinstance(record, Node):
            self.nodes.pop(record.name, None)
            touched.nodes = True
        elif isinstance(record, Peer):
            self.peers.pop(record.name, None)
            touched.peers = True
        elif isinstance(record, Heartbeat):
            self.heartbeat = None
        elif isinstance(record, SyncCanary):
            self.synced_kinds.discard(record.kind)

    def drain(self) -> Touched:
        """Forget everything (disconnect / revoke); returns what that touched."""
        touched = Touched(
            services=set(self.services) | set(self.endpoints),
            nodes=bool(self.nodes),
            peers=bool(self.peers),
        )
        self._records.clear()
        self.services.clear()
        self.endpoints.clear()
        self.nodes.clear()
        self.peers.clear()
        self.heartbeat = None
        self.synced_kinds.clear()
        self._held.clear()
        self.counts.clear()
        if touched and self._on_touch is not None:
            self._on_touch(self.cell, touched)
        return touched

    def is_held(self, key: str) -> bool:
        """True when key stays only because its delete is held: the cell no longer has it."""
        try:
            return key in self._held.get(kind_of_key(key), ())
        except RecordError:
            return False

    @property
    def held_deletes(self) -> int:
        return sum(len(keys) for keys in self._held.values())

    def kind_counts(self) -> dict[str, int]:
        return {str(kind): self.counts[kind] for kind in sorted(Kind) if self.counts[kind]}
