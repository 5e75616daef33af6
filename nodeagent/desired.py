"""`DesiredLb`: the load-balancer state the agent wants, kept incrementally per service
(`wanted`; what has landed in the maps is `LbMaps.landed`).

Flow: a service's selection (`meshcore.lbpolicy.ServiceSelection`) → `set_frontends` (a whole
service, on a rebuild) or `update_frontend` (what entered and left one frontend's selection) →
`bpf.lbstate` entries → the reconciler diffs the dirty keys against the maps. One endpoint change
costs work in proportion to the change (`patch_order` keeps slots without a Python pass over
the service).

`routes_for_nodes` gives the desired routes to remote nodes' pod CIDRs the same way: pure.

Ids: a backend id per (address, port, protocol), shared by every frontend that uses it and freed
when none does; a reverse-NAT id per frontend. `seed()` adopts the ids found in the pinned maps
after a restart, so a restarted agent rewrites nothing that did not change. Slot order is stable:
a new backend takes a freed slot or goes last, so one change rewrites O(1) slots.

After a restart the sources arrive one by one (the own cell first, each peer later), so a
frontend's first builds see only part of its backends. Until `release_restored()` (the delete
gate opens: every source synced once) a restored frontend is ordered by its restored slots
(`restored_order`): backends found in the maps keep their slot, new ones go after them — the
same layout the gated reconciler writes — so when the last source's backends arrive the entry is
the one the maps hold and nothing is rewritten. At release the order is rebased on what the maps
hold, and backends that did not come back leave holes filled the usual way.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Final, Generic, TypeVar, cast

from bpf.layout import IPPROTO_TCP, IPPROTO_UDP, Lb4Backend
from bpf.lbstate import (
    BACKEND_ID_MAX,
    REV_NAT_ID_MAX,
    BackendId,
    Frontend,
    LbState,
    RevNatId,
    ServiceEntry,
)
from meshcore.lbpolicy import MergedBackend, MergedService, ServiceRef
from meshcore.model import CellId, Node
from meshcore.model.records import Frontend as RecordFrontend

PROTOCOLS: Final = {"TCP": IPPROTO_TCP, "UDP": IPPROTO_UDP}

BackendKey = tuple[IPv4Address, int, int]  # address, port, protocol number

Id = TypeVar("Id", bound=int)  # a backend id or a reverse-NAT id


def routes_for_nodes(nodes: Iterable[Node]) -> dict[IPv4Network, IPv4Address]:
    """Desired routes: every IPv4 pod CIDR of a remote node via the node's first IPv4 address.

    Deterministic: nodes are taken in (cell, name) order and the first claim of a CIDR wins.
    """
    routes: dict[IPv4Network, IPv4Address] = {}
    for node in sorted(nodes, key=lambda n: (n.cell, n.name)):
        gateway = next((a for a in node.addresses if isinstance(a, IPv4Address)), None)
        if gateway is None:
            continue
        for cidr in node.pod_cidrs:
            if isinstance(cidr, IPv4Network):
                routes.setdefault(cidr, gateway)
    return routes


class IdsExhausted(RuntimeError):
    """No free backend or reverse-NAT id is left."""


class _Ids(Generic[Id]):
    """Hand out ids 1..limit in increasing order, wrapping around past the limit.

    A freed id is not reused until the counter comes round again: the maps may still hold the
    old meaning of an id for a while (a write backing off, deletes gated after a restart), and a
    reused id would send that service's connections to the wrong backend meanwhile.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used: set[Id] = set()
        self._next = 1

    def take(self) -> Id:
        for _ in range(self.limit):
            candidate = cast(Id, self._next)  # a NewType of int: the same int at run time
            self._next = self._next % self.limit + 1
            if candidate not in self.used:
                self.used.add(candidate)
                return candidate
        raise IdsExhausted(f"all {self.limit} ids are in use")

    def adopt(self, value: Id) -> None:
        self.used.add(value)
        self._next = max(self._next, value % self.limit + 1)

    def give_back(self, value: Id) -> None:
        self.used.discard(value)


def stable_order(old: tuple[Id, ...], new: Iterable[Id]) -> tuple[Id, ...]:
    """`new` ordered so that as many ids as possible keep their slot from `old`.

    Removed ids (and repeats in `old`) leave holes; added ids fill them first (in id order), then
    go last; remaining holes are filled by moving the last ids in. Each id appears once.
    """
    wanted = set(new)
    kept: set[Id] = set()
    slots: list[Id | None] = []
    for b in old:
        if b in wanted and b not in kept:
            kept.add(b)
            slots.append(b)
        else:
            slots.append(None)
    added = iter(sorted(wanted - kept))
    for i, value in enumerate(slots):
        if value is None:
            fill = next(added, None)
            if fill is None:
                break
            slots[i] = fill
    slots.extend(added)
    i = 0
    while i < len(slots):
        while slots and slots[-1] is None:
            slots.pop()
        if i < len(slots) and slots[i] is None:
            slots[i] = slots.pop()
        i += 1
    return tuple(b for b in slots if b is not None)


def patch_order(old: tuple[Id, ...], added: Iterable[Id], removed: Iterable[Id]) -> tuple[Id, ...]:
    """`stable_order(old, set(old) - removed | added)` in O(change) Python steps.

    For a small change to a large frontend: the copies and searches run in C. ``old`` holds
    each id once; ``added`` ids are not in ``old``.
    """
    slots: list[Id | None] = list(old)
    holes = []
    for b in set(removed):
        with contextlib.suppress(ValueError):
            i = slots.index(b)
            slots[i] = None
            holes.append(i)
    holes.sort()
    fill = iter(sorted(set(added)))
    remaining = []
    for i in holes:
        value = next(fill, None)
        if value is None:
            remaining.append(i)
        else:
            slots[i] = value
    slots.extend(fill)
    for i in remaining:
        while slots and slots[-1] is None:
            slots.pop()
        if i < len(slots) and slots[i] is None:
            slots[i] = slots.pop()
    while slots and slots[-1] is None:
        slots.pop()
    return tuple(cast(list[Id], slots))


def restored_order(
    restored: tuple[Id, ...], current: tuple[Id, ...], new: Iterable[Id]
) -> tuple[Id, ...]:
    """`new` laid out on a restored frontend while sources are still arriving (pure).

    Ids of ``restored`` (the slots the maps held at start-up) come first, in their restored
    order; then ids already placed after them (``current``), in their order; then the other
    ids, in id order. Holes are not filled: until the delete gate opens the maps keep every
    restored backend in its slot, and new ones are written after them.
    """
    wanted = set(new)
    placed: set[Id] = set()
    order = []
    for b in (*restored, *current):
        if b in wanted and b not in placed:
            placed.add(b)
            order.append(b)
    order.extend(sorted(wanted - placed))
    return tuple(order)


@dataclass
class DesiredStats:
    services: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> frontends/backends
    conflicts: int = 0


class DesiredLb:
    def __init__(self) -> None:
        self.wanted = LbState()
        self.dirty_frontends: set[Frontend] = set()
        self.dirty_backends: set[BackendId] = set()
        self.stats = DesiredStats()
        self._frontends_of: dict[ServiceRef, set[Frontend]] = {}
        self._owner: dict[Frontend, ServiceRef] = {}
        self._backend_ids: dict[BackendKey, BackendId] = {}
        self._backend_refs: Counter[BackendId] = Counter()
        self._rev_nat: dict[Frontend, RevNatId] = {}
        # Slot order found in the maps at start-up, the base of a restored frontend's order
        # until `release_restored()` (every source synced once, or the sync timeout).
        self._restored_order: dict[Frontend, tuple[BackendId, ...]] = {}
        self._ids: _Ids[BackendId] = _Ids(BACKEND_ID_MAX)
        self._rev_ids: _Ids[RevNatId] = _Ids(REV_NAT_ID_MAX)

    def seed(self, restored: LbState) -> None:
        """Adopt the ids of a restored map state (call before the first `set_frontends`)."""
        for bid, be in restored.backends.items():
            self._backend_ids.setdefault((be.address, be.port, be.proto), bid)
            self._ids.adopt(bid)
        for fe, entry in restored.services.items():
            self._rev_nat[fe] = entry.rev_nat_id
            self._rev_ids.adopt(entry.rev_nat_id)
            self._restored_order[fe] = entry.backend_ids

    def release_restored(self, held: Mapping[Frontend, ServiceEntry]) -> None:
        """The delete gate opened: order restored frontends the usual way from now on.

        ``held`` is what the maps hold now (restored slots plus what the gated reconciler
        appended): each frontend's order is rebased on it, so backends that did not come back
        leave holes that the others fill with the fewest slot writes.
        """
        for fe, restored in self._restored_order.items():
            entry = self.wanted.services.get(fe)
            if entry is None:
                continue
            have = held.get(fe)
            order = stable_order(have.backend_ids if have else restored, entry.backend_ids)
            if order != entry.backend_ids:
                self.wanted.services[fe] = ServiceEntry(entry.rev_nat_id, order, entry.flags)
                self.dirty_frontends.add(fe)
        self._restored_order.clear()

    def set_service(self, ref: ServiceRef, merged: MergedService | None) -> None:
        """`set_frontends` from a full `merge_service` result (None: the service is gone here).

        The agent keeps `ServiceSelection`s and calls `set_frontends` / `update_frontend`;
        this whole-service form is for callers holding a `MergedService` (tests, benchmarks).
        """
        if merged is None:
            self.set_frontends(ref, None)
        else:
            self.set_frontends(ref, [(mf.frontend, mf.backends) for mf in merged.frontends])

    def set_frontends(
        self,
        ref: ServiceRef,
        frontends: Iterable[tuple[RecordFrontend, Iterable[MergedBackend]]] | None,
    ) -> None:
        """Replace what ref contributes: its frontends and their selected backends."""
        wanted: dict[Frontend, list[tuple[BackendKey, CellId]]] = {}
        for frontend, selected in frontends or ():
            fe = self._frontend(frontend)
            if fe is None:
                self.stats.skipped["frontend-not-ipv4-tcp-udp"] += 1
                continue
            owner = self._owner.get(fe)
            if owner is not None and owner != ref:
                self.stats.conflicts += 1
                continue
            backends = []
            for b in selected:
                key = self._backend_key(b)
                if key is not None:
                    backends.append((key, b.cell_id))
            wanted[fe] = backends
        old = self._frontends_of.pop(ref, set())
        for fe in old - wanted.keys():
            self._drop_frontend(fe)
        for fe, backends in wanted.items():
            self._set_frontend(ref, fe, backends)
        if wanted:
            self._frontends_of[ref] = set(wanted)
        self.stats.services = len(self._frontends_of)

    def update_frontend(
        self,
        ref: ServiceRef,
        frontend: RecordFrontend,
        added: Iterable[MergedBackend],
        removed: Iterable[MergedBackend],
    ) -> None:
        """Apply a change of one frontend's selection: work in proportion to the change.

        A frontend `set_frontends` left out (not IPv4 TCP/UDP, owned by another service) stays
        out. A backend in both ``added`` and ``removed`` was updated in place (keeps its slot).
        """
        fe = self._frontend(frontend)
        current = self.wanted.services.get(fe) if fe is not None else None
        if fe is None or current is None or self._owner.get(fe) != ref:
            return
        wanted: dict[BackendKey, CellId] = {}
        for b in added:
            key = self._backend_key(b)
            if key is not None:
                wanted[key] = b.cell_id
        new_ids = []
        for key, cell_id in wanted.items():
            bid = self._backend_id(key, cell_id)
            if bid not in current.backend_ids:
                new_ids.append(bid)
                self._backend_refs[bid] += 1
        gone_ids = []
        for b in removed:
            key = self._backend_key(b)
            gone = self._backend_ids.get(key) if key is not None else None
            if key not in wanted and gone is not None and gone in current.backend_ids:
                gone_ids.append(gone)
        if not new_ids and not gone_ids:
            return
        restored = self._restored_order.get(fe)
        if restored is None:
            order = patch_order(current.backend_ids, new_ids, gone_ids)
        else:  # O(size of the frontend), only until the delete gate opens
            kept = set(current.backend_ids).difference(gone_ids)
            order = restored_order(restored, current.backend_ids, kept.union(new_ids))
        for bid in gone_ids:
            self._unref(bid)
        self.wanted.services[fe] = ServiceEntry(current.rev_nat_id, order, current.flags)
        self.dirty_frontends.add(fe)

    @staticmethod
    def _frontend(frontend: RecordFrontend) -> Frontend | None:
        proto = PROTOCOLS.get(frontend.protocol)
        if not isinstance(frontend.vip, IPv4Address) or proto is None:
            return None
        return Frontend(frontend.vip, frontend.port, proto)

    def _backend_key(self, backend: MergedBackend) -> BackendKey | None:
        if not isinstance(backend.address, IPv4Address):
            self.stats.skipped["backend-not-ipv4"] += 1
            return None
        return (backend.address, backend.port, PROTOCOLS[backend.protocol])

    def _set_frontend(
        self, ref: ServiceRef, fe: Frontend, backends: list[tuple[BackendKey, CellId]]
    ) -> None:
        self._owner[fe] = ref
        ids = []
        for key, cell_id in backends:
            bid = self._backend_id(key, cell_id)
            ids.append(bid)
        current = self.wanted.services.get(fe)
        old_ids = current.backend_ids if current else ()
        new_ids = set(ids)
        for bid in new_ids.difference(old_ids):
            self._backend_refs[bid] += 1
        for bid in set(old_ids) - new_ids:
            self._unref(bid)
        rev = self._rev_nat.get(fe)
        if rev is None:
            rev = self._rev_nat[fe] = self._rev_ids.take()
        restored = self._restored_order.get(fe)
        if restored is None:
            order = stable_order(old_ids, new_ids)
        else:
            order = restored_order(restored, old_ids, new_ids)
        entry = ServiceEntry(rev, order)
        if entry != current:
            self.wanted.services[fe] = entry
            self.dirty_frontends.add(fe)

    def _backend_id(self, key: BackendKey, cell_id: CellId) -> BackendId:
        bid = self._backend_ids.get(key)
        if bid is None:
            bid = self._backend_ids[key] = self._ids.take()
        value = Lb4Backend(key[0], key[1], key[2], cell_id=cell_id)
        if self.wanted.backends.get(bid) != value:
            self.wanted.backends[bid] = value
            self.dirty_backends.add(bid)
        return bid

    def _drop_frontend(self, fe: Frontend) -> None:
        entry = self.wanted.services.pop(fe, None)
        self._owner.pop(fe, None)
        self.dirty_frontends.add(fe)
        rev = self._rev_nat.pop(fe, None)
        if rev is not None:
            self._rev_ids.give_back(rev)
        if entry is not None:
            for bid in set(entry.backend_ids):
                self._unref(bid)

    def _unref(self, bid: BackendId) -> None:
        if self._backend_refs[bid] > 0:
            self._backend_refs[bid] -= 1
        if self._backend_refs[bid] > 0:
            return
        del self._backend_refs[bid]
        be = self.wanted.backends.pop(bid, None)
        if be is not None:
            self._backend_ids.pop((be.address, be.port, be.proto), None)
        self._ids.give_back(bid)
        self.dirty_backends.add(bid)

    def take_dirty(self) -> tuple[set[Frontend], set[BackendId]]:
        fes, bids = self.dirty_frontends, self.dirty_backends
        self.dirty_frontends, self.dirty_backends = set(), set()
        return fes, bids
