"""`Reconciler`: make the BPF maps (`LbMaps`) hold the desired load-balancer state.

Flow: `DesiredLb` marks the frontends and backends a change touched → `sync()` diffs just those
keys of what it wants (`DesiredLb.wanted`) against what landed (`LbMaps.landed`) and applies one
batched `LbDiff`; a failed batch is retried key by key, and a key that still fails waits out its
own backoff (`meshcore.backoff`: the shared delays, the last one repeating, no jitter) while the
rest goes on. `full_pass()` diffs everything (after re-reading the maps when asked) and repairs
drift.
Bookkeeping changes only after the maps took the write (LbMaps' view).

A full map (`MapFull`: the kernel refused an insert with E2BIG / ENOSPC) is a bounded condition,
not an error to hammer: the refused key is parked (`nodeagent.fullmaps`) — not retried on the
backoff — until entries leave that map, with one probe per full map every `map_full_retry`
seconds besides. Nothing is deleted to make room: a key whose write was refused keeps whatever it
had in the maps. `full_maps()` reports it (/status, metrics, the agent report).

Start-up: `restore()` reads the pinned maps back. Until `allow_deletes()` (every source synced
once, or the sync timeout passed) nothing is removed: a service keeps its restored backends and
gains new ones, and no service or backend is deleted — an agent restart never drops a connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

from bpf.layout import SERVICES_MAP
from bpf.lbmaps import InvalidDiff, LbMaps, LbMapsError, MapFull
from bpf.lbstate import BackendId, Frontend, LbDiff, LbState, ServiceEntry
from meshcore.backoff import BACKOFF, backoff_delay
from nodeagent.desired import DesiredLb
from nodeagent.fullmaps import MAP_FULL_RETRY, FullMap, FullMaps, Key

log = structlog.get_logger("nodeagent.reconciler")


@dataclass
class ReconcileStats:
    applies: int = 0
    failed: int = 0
    invalid: int = 0
    full_passes: int = 0
    repaired: int = 0
    deferred_deletes: int = 0
    last_error: str = ""
    attempts: int = 0  # LbMaps.apply calls, failed ones included


@dataclass
class _Retry:
    attempts: int = 0
    due: float = 0.0


@dataclass
class SyncResult:
    applied: int = 0
    frontends: set[Frontend] = field(default_factory=set)
    failed: int = 0


class Reconciler:
    def __init__(
        self,
        maps: LbMaps,
        desired: DesiredLb,
        *,
        backoff: tuple[float, ...] = BACKOFF,
        map_full_retry: float = MAP_FULL_RETRY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maps = maps
        self.desired = desired
        self.stats = ReconcileStats()
        self.deletes_allowed = False
        self._backoff = backoff
        self._clock = clock
        self._retry: dict[Key, _Retry] = {}
        self._deferred_frontends: set[Frontend] = set()
        self._deferred_backends: set[BackendId] = set()
        self.full = FullMaps(retry=map_full_retry)
        self._room_seen = self._room_made()

    def restore(self) -> LbState:
        """Read the pinned maps into the view and seed the desired ids from them."""
        restored = self.maps.restore()
        self.desired.seed(restored)
        # Everything restored is reconsidered once deletes are allowed.
        self._deferred_frontends.update(restored.services)
        self._deferred_backends.update(restored.backends)
        log.info(
            "Maps restored",
            services=len(restored.services),
            backends=len(restored.backends),
        )
        return restored

    def allow_deletes(self) -> None:
        if self.deletes_allowed:
            return
        self.deletes_allowed = True
        # Restored frontends kept their restored slots while the sources arrived; from now on
        # they are ordered the usual way, rebased on what the maps hold.
        self.desired.release_restored(self.maps.landed.services)
        self.desired.dirty_frontends |= self._deferred_frontends
        self.desired.dirty_backends |= self._deferred_backends
        self._deferred_frontends.clear()
        self._deferred_backends.clear()

    # one pass over the dirty keys ----------------------------------------------------

    def sync(self) -> SyncResult:
        now = self._clock()
        self._retry_parked(self.full.due(now))
        fes, bids = self.desired.take_dirty()
        due = [k for k, r in self._retry.items() if r.due <= now]
        for key in due:
            if isinstance(key, int):
                bids.add(key)
            else:
                fes.add(key)
        waiting = {k for k, r in self._retry.items() if r.due > now}
        fes = {fe for fe in fes if fe not in waiting}
        bids = {b for b in bids if b not in waiting}
        result = self._reconcile(fes, bids)
        self._unpark_freed()
        return result

    def full_pass(self, *, reread: bool = False) -> SyncResult:
        """Diff every key; with reread, first read the maps back (repairs outside changes)."""
        self.stats.full_passes += 1
        held: set[Frontend] = set()
        if reread:
            self.maps.restore()
            # A service the maps hold but could not read back whole is not in the view.
            held = {svc.frontend for svc in self.maps.contents().services}
        view, want = self.maps.landed, self.desired.wanted
        fes = {fe for fe in view.services.keys() | want.services.keys()
               if view.services.get(fe) != want.services.get(fe)}  # fmt: skip
        fes |= held - view.services.keys() - want.services.keys()
        bids = {b for b in view.backends.keys() | want.backends.keys()
                if view.backends.get(b) != want.backends.get(b)}  # fmt: skip
        result = self._reconcile(fes, bids)
        self._unpark_freed()
        if reread:
            # restore() queued what no service reaches (slots past a count, unused reverse NAT)
            # for the next apply; an empty diff sweeps it even when nothing else changed.
            self._apply(LbDiff())
        self.stats.repaired += result.applied
        return result

    def _reconcile(self, fes: Iterable[Frontend], bids: Iterable[BackendId]) -> SyncResult:
        fe_keys, bid_keys = self._skip_parked(set(fes), set(bids))
        diff, deletes = self._diff(fe_keys, bid_keys)
        # A key retried while the maps already match (or its delete is deferred) is done.
        done: list[Key] = [*(fe_keys - diff.services.keys())]
        done += bid_keys - diff.backends.keys() - deletes
        for key in done:
            self._retry.pop(key, None)
        self.full.landed(done)
        result = SyncResult()
        if diff:
            result = self._apply(diff)
        if deletes:
            # Backends go once no service in the maps may still pick them.
            gone = {b: None for b in deletes if not self.maps.backend_in_use(b)}
            for b in deletes:
                if b not in gone:
                    self.desired.dirty_backends.add(b)  # retried at the next sync
            if gone:
                r = self._apply(LbDiff(backends=dict(gone)))
                result.applied += r.applied
                result.failed += r.failed
        return result

    def _diff(
        self, fes: Iterable[Frontend], bids: Iterable[BackendId]
    ) -> tuple[LbDiff, set[BackendId]]:
        view, want = self.maps.landed, self.desired.wanted
        diff = LbDiff()
        for fe in fes:
            target = want.services.get(fe)
            have = view.services.get(fe)
            if not self.deletes_allowed:
                if target is None:
                    # Deferred even when the view lacks it: the maps may hold it half-written.
                    self._deferred_frontends.add(fe)
                    if have is not None:
                        self.stats.deferred_deletes += 1
                    continue
                if have is not None:
                    kept = [b for b in have.backend_ids if b not in target.backend_ids]
                    if kept:
                        self._deferred_frontends.add(fe)
                        target = ServiceEntry(
                            target.rev_nat_id, have.backend_ids + tuple(
                                b for b in target.backend_ids if b not in have.backend_ids
                            ), target.flags,
                        )  # fmt: skip
            if target != have or target is None:
                # A delete is sent even when the view lacks the service (missing is fine): a
                # half-written one is not in the view, and its slots keep its backends in use.
                diff.services[fe] = target
        deletes: set[BackendId] = set()
        # Backends a written service needs that the maps lack or hold differently: ids it
        # already had are in the view (a changed or failed one is in `bids` by its own key),
        # so only its new ids are looked at (set operations in C, not a pass over its slots).
        needed: set[BackendId] = set()
        for fe, e in diff.services.items():
            if e is not None:
                had = view.services.get(fe)
                ids = set(e.backend_ids)
                needed |= ids.difference(had.backend_ids) if had is not None else ids
        for b in set(bids) | {b for b in needed if view.backends.get(b) != want.backends.get(b)}:
            target_be = want.backends.get(b)
            if target_be is None:
                if b in view.backends:
                    if self.deletes_allowed:
                        deletes.add(b)
                    else:
                        self._deferred_backends.add(b)
                continue
            if view.backends.get(b) != target_be:
                diff.backends[b] = target_be
        return diff, deletes

    def _apply(self, diff: LbDiff) -> SyncResult:
        result = SyncResult()
        if len(diff.services) + len(diff.backends) == 1:  # one key: no batch to split after
            key: Key = next(iter(diff.services), None) or next(iter(diff.backends))
            if self._apply_one(diff, key, result):
                self.stats.applies += 1
                if not isinstance(key, int):
                    result.frontends.add(key)
            return result
        self.stats.attempts += 1
        try:
            self.maps.apply(diff)
        except (LbMapsError, InvalidDiff) as e:
            self._note(e)
            return self._apply_each(diff, full=isinstance(e, MapFull))
        self.stats.applies += 1
        result.applied = len(diff)
        result.frontends = set(diff.services)
        for fe in diff.services:
            self._retry.pop(fe, None)
        for bid in diff.backends:
            self._retry.pop(bid, None)
        self._landed([*diff.services, *diff.backends])
        return result

    def _apply_each(self, diff: LbDiff, *, full: bool = False) -> SyncResult:
        """After a failed batch: one key at a time, so one bad key cannot hold up the rest."""
        result = SyncResult()
        view, want = self.maps.landed, self.desired.wanted
        ups = {bid: be for bid, be in diff.backends.items() if be is not None}
        # After a full map, the new backends as one batch first: a batch refused for want of
        # room in the services map need not cost one apply per backend (250 000 of them at
        # Cilium's scale).
        if full and len(ups) > 1 and self._apply_quiet(LbDiff(backends=dict(ups))):
            result.applied += len(ups)
            ups = {}
        for bid, up in ups.items():
            self._apply_one(LbDiff(backends={bid: up}), bid, result)
        for fe, entry in diff.services.items():
            part = LbDiff(services={fe: entry})
            if entry is not None:
                for b in entry.backend_ids:
                    if b not in view.backends and b in want.backends:
                        part.backends[b] = want.backends[b]
            if self._apply_one(part, fe, result):
                result.frontends.add(fe)
        for bid, be in diff.backends.items():
            if be is None:
                self._apply_one(LbDiff(backends={bid: None}), bid, result)
        return result

    def _apply_quiet(self, diff: LbDiff) -> bool:
        """One attempt; a failure is noted, not retried (the caller goes key by key)."""
        self.stats.attempts += 1
        try:
            self.maps.apply(diff)
        except (LbMapsError, InvalidDiff) as e:
            self._note(e)
            return False
        keys: list[Key] = [*diff.services, *diff.backends]
        for key in keys:
            self._retry.pop(key, None)
        self._landed(keys)
        return True

    def _apply_one(self, diff: LbDiff, key: Key, result: SyncResult) -> bool:
        self.stats.attempts += 1
        try:
            self.maps.apply(diff)
        except MapFull as e:
            self._note(e)
            self._park(key, e)
            result.failed += 1
            return False
        except (LbMapsError, InvalidDiff) as e:
            self._note(e)
            retry = self._retry.setdefault(key, _Retry())
            # No jitter: it spreads the clients of a shared server; these maps are this node's.
            delay = backoff_delay(self._backoff, retry.attempts, jitter=0.0)
            retry.attempts += 1
            retry.due = self._clock() + delay
            result.failed += 1
            return False
        self._retry.pop(key, None)
        self._landed([key, *diff.backends])
        result.applied += 1
        return True

    def _note(self, e: Exception) -> None:
        if isinstance(e, InvalidDiff):
            self.stats.invalid += 1
            log.error("Diff refused by the maps (a bug)", error=str(e))
        else:
            self.stats.failed += 1
        self.stats.last_error = str(e)

    # full maps -------------------------------------------------------------------------

    def full_maps(self) -> list[FullMap]:
        """The maps that refused entries and still have keys parked, by name."""
        return self.full.report()

    def _park(self, key: Key, e: MapFull) -> None:
        self._retry.pop(key, None)
        self.full.park(key, e, self._clock())

    def _landed(self, keys: Iterable[Key]) -> None:
        self.full.landed(keys)

    def _retry_parked(self, keys: Iterable[Key]) -> None:
        """Parked keys handed back: dirty again, so the next pass writes them."""
        for key in keys:
            if isinstance(key, int):
                self.desired.dirty_backends.add(key)
            else:
                self.desired.dirty_frontends.add(key)

    def _skip_parked(
        self, fes: set[Frontend], bids: set[BackendId]
    ) -> tuple[set[Frontend], set[BackendId]]:
        """Leave parked keys out, except those now to be deleted (a delete makes room)."""
        if not len(self.full):
            return fes, bids
        want = self.desired.wanted
        for fe in [fe for fe in fes if self.full.waiting(fe)]:
            if fe in want.services:
                fes.discard(fe)
            else:
                self.full.drop(fe)
        for bid in [b for b in bids if self.full.waiting(b)]:
            if bid in want.backends:
                bids.discard(bid)
            else:
                self.full.drop(bid)
        return fes, bids

    def _unpark_freed(self) -> None:
        """Entries left a full map: retry as many of its parked keys as that room may hold."""
        made = self._room_made()
        seen, self._room_seen = self._room_seen, made
        if not len(self.full):
            return
        want = self.desired.wanted

        def cost(key: Key) -> int:
            entry = want.services.get(key) if not isinstance(key, int) else None
            return len(entry.backend_ids) + 1 if entry is not None else 1

        room = {name: n - seen.get(name, 0) for name, n in made.items()}
        self._retry_parked(self.full.freed(room, cost))

    def _room_made(self) -> dict[str, int]:
        """Entries deleted per map, not counting those of refused writes taken back."""
        made = dict(self.maps.stats.deleted_in)
        made[SERVICES_MAP] = made.get(SERVICES_MAP, 0) - self.maps.stats.entries_unwound
        return made

    @property
    def pending(self) -> int:
        return (
            len(self._retry) + len(self.desired.dirty_frontends) + len(self.desired.dirty_backends)
        )
