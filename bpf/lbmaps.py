"""`LbMaps`: the one interface through which the node agent programs the load balancer maps.

The agent thinks in services (a frontend and its ordered backend ids) and backends (id → address);
`LbMaps` turns a diff of those into map writes, ordered make-before-break so a concurrent
`connect()` only ever sees a valid backend:

1. new and changed backends;
2. reverse-NAT entries of new and changed services;
3. the backend slots (1..N) of new and changed services, then their master entries (slot 0, with
   the new count), then the slots past the new count;
4. deleted services: master first (the service is gone for the datapath at once), then slots;
5. backends and reverse-NAT entries no service uses any more.

Every step is one batched syscall per map (chunks of `BATCH_MAX`). `apply` validates the whole
diff before it writes anything: a bad diff raises `InvalidDiff` and never reaches the maps. When a
write fails `apply` raises `LbMapsError`, and the in-memory view (`landed`) holds only what surely
landed; a service caught half-written is dropped from the view (so the next diff rewrites it)
while its backends stay protected from deletion. Retrying the same diff, or the diff between
`landed` and the desired state (`DesiredLb.wanted`), converges.

A full map (the kernel's E2BIG / ENOSPC) raises `MapFull`. Nothing the maps held before is
deleted to make room, but what the refused write itself left behind is taken out again, so that
room is not held by entries no master reaches: the slots and masters of services the maps held
nothing of, and the slots past the old count of services that could not grow (such a service
keeps its old entry, in the maps and in the view).

The logic lives here once, in one concrete engine over a `MapStore` (bpf/mapstore.py: write,
delete and read raw entries): `LbMaps(PinnedMapStore(...))` on the kernel's pinned maps,
`LbMaps(MemoryMapStore())` in memory, `LbMaps(FaultyMapStore(store, p))` failing at random.
`PinnedLbMaps`, `FakeLbMaps` and `FaultyLbMaps` are the short ways to build those (they only
construct the store). The store counts map calls and entries; `stats` reads them through.

`dump()` reads the maps themselves (not the view) into a canonical, sorted text form;
`restore()` reads them back into the view after an agent restart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, count
from operator import ne
from types import TracebackType
from typing import Self

from bpf.layout import (
    BACKENDS_MAP,
    REVERSE_NAT_MAP,
    SERVICES_MAP,
    Lb4ReverseNat,
    Lb4Service,
    pack_backend_id,
    pack_rev_nat_id,
)
from bpf.lbstate import (
    BACKEND_ID_MAX,
    CELL_ID_MAX,
    PROTO_NAMES,
    REV_NAT_ID_MAX,
    SCOPE_NAMES,
    SLOTS_MAX,
    BackendId,
    Frontend,
    LbDiff,
    LbState,
    MapContents,
    RevNatId,
    ServiceEntry,
    decode_maps,
    format_dump,
)
from bpf.mapstore import (
    BATCH_MAX,
    MAP_SHAPES,
    LbMapsError,
    MapFull,
    MapStore,
    StoreStats,
    chunks,
)

# The store's names are re-exported: callers import the errors and shapes from here.
__all__ = [
    "BATCH_MAX",
    "MAP_SHAPES",
    "InvalidDiff",
    "LbMaps",
    "LbMapsError",
    "LbMapsStats",
    "MapFull",
    "MapStore",
    "StoreStats",
    "chunks",
]


class InvalidDiff(ValueError):
    """The diff is refused as a whole before anything is written; the message names the entry."""


@dataclass
class LbMapsStats:
    """What the engine did, and (read through) what its store counted: map calls, entries."""

    store: StoreStats
    failed_applies: int = 0
    # Entries that left each map (deleted ones, not missing keys), and of those the entries of
    # services a full map refused, taken out again (they never made room for anything).
    deleted_in: dict[str, int] = field(default_factory=dict)
    entries_unwound: int = 0

    @property
    def batch_calls(self) -> int:
        return self.store.batch_calls

    @property
    def single_calls(self) -> int:
        return self.store.single_calls

    @property
    def entries_written(self) -> int:
        return self.store.entries_written

    @property
    def entries_deleted(self) -> int:
        return self.store.entries_deleted


# --- the engine ------------------------------------------------------------------------------


class LbMaps:
    """Program the LB maps from diffs through `store`; keep an in-memory view of what landed.

    The one place the bookkeeping lives, whatever the store. Closing it closes the store.
    """

    def __init__(self, store: MapStore) -> None:
        self.store = store
        self.stats = LbMapsStats(store.stats)
        self._reset()

    def _reset(self) -> None:
        self._view = LbState()
        self._rev_nat: dict[RevNatId, Lb4ReverseNat] = {}
        self._rev_nat_owner: dict[RevNatId, Frontend] = {}
        # Backend ids each frontend's slots 1..count may hold (old and new while half-written).
        self._possible: dict[Frontend, frozenset[BackendId]] = {}
        self._refs: Counter[BackendId] = Counter()
        # Highest slot that may exist in the map per frontend; > count means stale slots.
        self._slots_high: dict[Frontend, int] = {}
        self._unclean: set[Frontend] = set()
        self._pending_backends: set[BackendId] = set()
        self._pending_rev_nat: set[RevNatId] = set()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # the store ------------------------------------------------------------------------

    def _remove(self, map_name: str, keys: Sequence[bytes]) -> None:
        """`store.delete`, counting per map what left it (a full map's room comes from there)."""
        before = self.stats.entries_deleted
        try:
            self.store.delete(map_name, keys)
        finally:
            gone = self.stats.entries_deleted - before
            self.stats.deleted_in[map_name] = self.stats.deleted_in.get(map_name, 0) + gone

    # public ---------------------------------------------------------------------------

    @property
    def landed(self) -> LbState:
        """What surely landed in the maps (the view). Read-only for callers."""
        return self._view

    def contents(self) -> MapContents:
        items = self.store.items
        return decode_maps(items(SERVICES_MAP), items(BACKENDS_MAP), items(REVERSE_NAT_MAP))

    def backend_in_use(self, backend_id: BackendId) -> bool:
        """Whether a service in the maps may still send connections to this backend."""
        return self._refs[backend_id] > 0

    def dump(self) -> str:
        """The maps' contents (read from the maps, not the view) as canonical text."""
        return format_dump(self.contents())

    def apply(self, diff: LbDiff) -> None:
        self._validate(diff)
        try:
            self._apply(diff)
        except LbMapsError:
            self.stats.failed_applies += 1
            raise

    def restore(self) -> LbState:
        """Rebuild the view from the maps (after a restart); returns it.

        A service whose slots are incomplete is left out of the view (the next diff rewrites
        it) but its backends stay protected; slots past a master's count and slots without a
        master are queued for deletion at the next `apply`; nothing is deleted here.
        """
        contents = self.contents()
        self._reset()
        self._view.backends.update(contents.backends)
        self._rev_nat.update(contents.reverse_nat)
        for svc in contents.services:
            fe = svc.frontend
            present = frozenset(b for b in svc.backend_ids if b)
            self._set_possible(fe, present)
            self._slots_high[fe] = max(svc.slots, default=0)
            ids = svc.backend_ids
            complete = svc.count is not None and all(b in contents.backends for b in ids)
            if complete:
                self._view.services[fe] = ServiceEntry(svc.rev_nat_id, ids, svc.flags)
                self._rev_nat_owner[svc.rev_nat_id] = fe
            if not complete or svc.stale_slots:
                self._unclean.add(fe)
        self._pending_rev_nat.update(self._rev_nat.keys() - self._rev_nat_owner.keys())
        return self._view

    # validation -------------------------------------------------------------------------

    def _validate(self, diff: LbDiff) -> None:
        for bid, be in diff.backends.items():
            where = f"backend {bid}"
            if not 1 <= bid <= BACKEND_ID_MAX:
                raise InvalidDiff(f"{where}: id out of range 1..{BACKEND_ID_MAX}")
            if be is None:
                continue
            if not 1 <= be.port <= 0xFFFF:
                raise InvalidDiff(f"{where}: port {be.port} out of range 1..65535")
            if be.proto not in PROTO_NAMES:
                raise InvalidDiff(f"{where}: protocol {be.proto} is not TCP or UDP")
            if not 0 <= be.cell_id <= CELL_ID_MAX:
                raise InvalidDiff(f"{where}: cell id {be.cell_id} out of range 0..{CELL_ID_MAX}")
            if not 0 <= be.flags <= 0xFF:
                raise InvalidDiff(f"{where}: flags {be.flags} do not fit a byte")
            if be.address.is_unspecified:
                raise InvalidDiff(f"{where}: address 0.0.0.0")

        def backend_exists(bid: BackendId) -> bool:
            if bid in diff.backends:
                return diff.backends[bid] is not None
            return bid in self._view.backends

        refs_delta: Counter[BackendId] = Counter()
        owners: dict[int, Frontend] = {}
        for fe, entry in diff.services.items():
            where = f"service {fe}"
            if not 1 <= fe.port <= 0xFFFF:
                raise InvalidDiff(f"{where}: port out of range 1..65535")
            if fe.proto not in PROTO_NAMES:
                raise InvalidDiff(f"{where}: protocol {fe.proto} is not TCP or UDP")
            if fe.scope not in SCOPE_NAMES:
                raise InvalidDiff(f"{where}: unknown scope {fe.scope}")
            if fe.address.is_unspecified:
                raise InvalidDiff(f"{where}: address 0.0.0.0")
            possible = self._possible.get(fe, frozenset())
            if entry is None:
                refs_delta.subtract(possible)
                continue
            if not 1 <= entry.rev_nat_id <= REV_NAT_ID_MAX:
                raise InvalidDiff(f"{where}: rev_nat_id {entry.rev_nat_id} out of range")
            if len(entry.backend_ids) > SLOTS_MAX:
                raise InvalidDiff(f"{where}: {len(entry.backend_ids)} backends > {SLOTS_MAX}")
            if not 0 <= entry.flags <= 0xFF:
                raise InvalidDiff(f"{where}: flags {entry.flags} do not fit a byte")
            # Set operations (C) and loops over the change only: a one-backend change to a
            # 10 000-backend service must not cost a Python pass over its slots.
            ids = set(entry.backend_ids)
            if len(ids) != len(entry.backend_ids):
                raise InvalidDiff(f"{where}: a backend id appears in two slots")
            have = self._view.services.get(fe)
            fresh = ids.difference(have.backend_ids) if have is not None else ids
            # Ids of this service the diff also deletes or rewrites: a keys-view & set
            # intersection walks the smaller side, never every backend of the diff once per
            # service (that walk made an apply quadratic: 10 000 services of 10 took 5.6 s).
            fresh |= diff.backends.keys() & ids
            for bid in sorted(fresh):
                if not backend_exists(bid):
                    raise InvalidDiff(f"{where}: backend {bid} does not exist")
            refs_delta.subtract(possible - ids)
            refs_delta.update(ids - possible)
            other = owners.setdefault(entry.rev_nat_id, fe)
            if other != fe:
                raise InvalidDiff(f"{where}: rev_nat_id {entry.rev_nat_id} also used by {other}")
            current = self._rev_nat_owner.get(entry.rev_nat_id)
            if current is not None and current != fe and current not in diff.services:
                raise InvalidDiff(
                    f"{where}: rev_nat_id {entry.rev_nat_id} is used by service {current}"
                )
        for bid, be in diff.backends.items():
            if be is None and self._refs[bid] + refs_delta[bid] > 0:
                raise InvalidDiff(f"backend {bid}: deleted while a service still uses it")

    # apply ------------------------------------------------------------------------------

    def _apply(self, diff: LbDiff) -> None:
        view = self._view
        # 1. backends that new entries need.
        ups = [(b, be) for b, be in diff.backends.items() if be is not None]
        ups = [(b, be) for b, be in ups if view.backends.get(b) != be]
        if ups:
            self.store.update(BACKENDS_MAP, [(pack_backend_id(b), be.pack()) for b, be in ups])
            for b, be in ups:
                view.backends[b] = be
                self._pending_backends.discard(b)

        changed = {
            fe: e for fe, e in diff.services.items() if e is not None and view.services.get(fe) != e
        }
        if changed:
            self._write_services(changed)

        gone = [
            fe
            for fe, e in diff.services.items()
            if e is None and (fe in view.services or fe in self._slots_high)
        ]
        if gone:
            self._delete_services(gone)

        self._pending_backends.update(b for b, be in diff.backends.items() if be is None)
        self._sweep()

    def _write_services(self, changed: dict[Frontend, ServiceEntry]) -> None:
        view = self._view
        # 2. reverse NAT.
        rn = {e.rev_nat_id: Lb4ReverseNat(fe.address, fe.port) for fe, e in changed.items()}
        rn = {r: v for r, v in rn.items() if self._rev_nat.get(r) != v}
        if rn:
            self.store.update(
                REVERSE_NAT_MAP, [(pack_rev_nat_id(r), v.pack()) for r, v in rn.items()]
            )
            self._rev_nat.update(rn)
        # 3. slots, then masters; the view forgets these services until the masters landed.
        # Services the maps hold nothing of yet: unwound if a full map refuses the write.
        fresh = [fe for fe in changed if fe not in self._slots_high]
        olds: dict[Frontend, ServiceEntry] = {}  # what the maps surely held of the others
        slots: list[tuple[bytes, bytes]] = []
        for fe, entry in changed.items():
            old = view.services.pop(fe, None)
            if old is not None:
                olds[fe] = old
            old_ids = old.backend_ids if old else ()
            if old is not None and self._rev_nat_owner.get(old.rev_nat_id) == fe:
                del self._rev_nat_owner[old.rev_nat_id]
                if old.rev_nat_id != entry.rev_nat_id:
                    self._pending_rev_nat.add(old.rev_nat_id)
            self._set_possible(fe, self._possible.get(fe, frozenset()) | set(entry.backend_ids))
            ids = entry.backend_ids
            # Slots whose id changed, found in C (map/compress), then the slots past the old count.
            moved = compress(count(1), map(ne, ids, old_ids))
            for slot in chain(moved, range(len(old_ids) + 1, len(ids) + 1)):
                slots.append((fe.key(slot).pack(), Lb4Service(ids[slot - 1], 0, 0).pack()))
            high = max(self._slots_high.get(fe, 0), len(entry.backend_ids))
            self._slots_high[fe] = high
        masters = [
            (fe.key().pack(), Lb4Service(0, len(e.backend_ids), e.rev_nat_id, e.flags).pack())
            for fe, e in changed.items()
        ]
        masters_tried = False
        try:
            if slots:
                self.store.update(SERVICES_MAP, slots)
            masters_tried = True
            self.store.update(SERVICES_MAP, masters)
        except MapFull:
            if not masters_tried:  # no master changed: every old one still holds its count
                self._shrink_back(olds, changed)
            self._unwind(fresh, changed)
            raise
        for fe, entry in changed.items():
            view.services[fe] = entry
            self._rev_nat_owner[entry.rev_nat_id] = fe
            self._pending_rev_nat.discard(entry.rev_nat_id)
            self._set_possible(fe, frozenset(entry.backend_ids))
            if self._slots_high[fe] > len(entry.backend_ids):
                self._unclean.add(fe)
            else:
                self._unclean.discard(fe)

    def _unwind(self, fresh: list[Frontend], changed: dict[Frontend, ServiceEntry]) -> None:
        """A full map refused part of a write: take the new services' entries out again.

        Their slots (and any master that landed) would otherwise hold room that no complete
        service uses, so that a retry one service at a time could fit none. Only services the
        maps held nothing of before this write are unwound; a changed service keeps its old
        master and slots (half-written, as after any failed write).
        """
        keys = [fe.key(s).pack() for fe in fresh for s in range(self._slots_high[fe] + 1)]
        if not self._take_out(keys):
            return
        for fe in fresh:
            self._set_possible(fe, frozenset())
            del self._slots_high[fe]
            self._unclean.discard(fe)
            rev_nat_id = changed[fe].rev_nat_id
            if rev_nat_id not in self._rev_nat_owner:
                self._pending_rev_nat.add(rev_nat_id)

    def _shrink_back(
        self, olds: dict[Frontend, ServiceEntry], changed: dict[Frontend, ServiceEntry]
    ) -> None:
        """A full map refused the slots of changed services before any master was written:
        delete the slots past each old count (no master reaches them) and, where slots 1..count
        still hold the old ids (the service only grew), take the old entry back into the view."""
        keys = [
            fe.key(s).pack()
            for fe, old in olds.items()
            for s in range(len(old.backend_ids) + 1, self._slots_high[fe] + 1)
        ]
        if not self._take_out(keys):
            return
        for fe, old in olds.items():
            self._slots_high[fe] = len(old.backend_ids)
            if changed[fe].backend_ids[: len(old.backend_ids)] != old.backend_ids:
                continue  # a slot in 1..count holds a new id: half-written until rewritten
            current = self._rev_nat_owner.get(old.rev_nat_id)
            if current is not None and current != fe:
                continue
            self._view.services[fe] = old
            self._rev_nat_owner[old.rev_nat_id] = fe
            self._pending_rev_nat.discard(old.rev_nat_id)
            if changed[fe].rev_nat_id not in self._rev_nat_owner:
                self._pending_rev_nat.add(changed[fe].rev_nat_id)
            self._set_possible(fe, frozenset(old.backend_ids))
            self._unclean.discard(fe)

    def _take_out(self, keys: list[bytes]) -> bool:
        """Delete service-map entries a refused write left; False when that failed too (they
        stay half-written: the next write or delete of each service fixes it)."""
        deleted = self.stats.entries_deleted
        try:
            self._remove(SERVICES_MAP, keys)
        except LbMapsError:
            return False
        finally:
            self.stats.entries_unwound += self.stats.entries_deleted - deleted
        return True

    def _delete_services(self, gone: list[Frontend]) -> None:
        view = self._view
        # 4. masters first: the datapath stops translating at once.
        self._remove(SERVICES_MAP, [fe.key().pack() for fe in gone])
        for fe in gone:
            old = view.services.pop(fe, None)
            if old is not None and self._rev_nat_owner.get(old.rev_nat_id) == fe:
                del self._rev_nat_owner[old.rev_nat_id]
                self._pending_rev_nat.add(old.rev_nat_id)
            self._set_possible(fe, frozenset())
            self._slots_high.setdefault(fe, 0)
            self._unclean.add(fe)

    def _sweep(self) -> None:
        """Delete what nothing reaches any more: stale slots, reverse NAT, unused backends."""
        view = self._view
        if self._unclean:
            unclean = sorted(self._unclean)
            keys: list[bytes] = []
            for fe in unclean:
                entry = view.services.get(fe)
                if entry is None and fe in self._possible:
                    continue  # half-written service: its next write fixes the slots
                low = len(entry.backend_ids) + 1 if entry is not None else 1
                keys.extend(fe.key(s).pack() for s in range(low, self._slots_high[fe] + 1))
            if keys:
                self._remove(SERVICES_MAP, keys)
            for fe in unclean:
                entry = view.services.get(fe)
                if entry is None and fe in self._possible:
                    continue
                self._unclean.discard(fe)
                if entry is None:
                    del self._slots_high[fe]
                else:
                    self._slots_high[fe] = len(entry.backend_ids)
        rn = sorted(r for r in self._pending_rev_nat if r not in self._rev_nat_owner)
        if rn:
            self._remove(REVERSE_NAT_MAP, [pack_rev_nat_id(r) for r in rn])
            for r in rn:
                self._rev_nat.pop(r, None)
                self._pending_rev_nat.discard(r)
        dead = sorted(b for b in self._pending_backends if self._refs[b] == 0)
        if dead:
            self._remove(BACKENDS_MAP, [pack_backend_id(b) for b in dead])
            for b in dead:
                view.backends.pop(b, None)
                self._pending_backends.discard(b)
                del self._refs[b]

    def _set_possible(self, fe: Frontend, ids: frozenset[BackendId]) -> None:
        old = self._possible.pop(fe, frozenset())
        for b in old - ids:  # set differences in C; the loops cover the change only
            self._refs[b] -= 1
        self._refs.update(ids - old)
        if ids:
            self._possible[fe] = ids
