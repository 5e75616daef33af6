"""`Reconciler`: make the BPF maps (`LbMaps`) hold the desired load-balancer state.

Flow: `DesiredLb` marks the frontends and backends a change touched → `sync()` diffs just those
keys against the maps' view and applies one batched `LbDiff`; a failed batch is retried key by
key, and a key that still fails waits out its own backoff (`min * 2**n`, capped) while the rest
goes on. `full_pass()` diffs everything (after re-reading the maps when asked) and repairs drift.
Bookkeeping changes only after the maps took the write (LbMaps' view).

Start-up: `restore()` reads the pinned maps back. Until `allow_deletes()` (every source synced
once, or the sync timeout passed) nothing is removed: a service keeps its restored backends and
gains new ones, and no service or backend is deleted — an agent restart never drops a connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

from bpf.lbmaps import InvalidDiff, LbMaps, LbMapsError
from bpf.lbstate import Frontend, LbDiff, LbState, ServiceEntry
from nodeagent.desired import DesiredLb

log = structlog.get_logger("nodeagent.reconciler")

RETRY_BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

Key = Frontend | int  # a frontend, or a backend id


@dataclass
class ReconcileStats:
    applies: int = 0
    failed: int = 0
    invalid: int = 0
    full_passes: int = 0
    repaired: int = 0
    deferred_deletes: int = 0
    last_error: str = ""


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
        backoff: tuple[float, ...] = RETRY_BACKOFF,
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
        self._deferred_backends: set[int] = set()

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
        self.desired.dirty_frontends |= self._deferred_frontends
        self.desired.dirty_backends |= self._deferred_backends
        self._deferred_frontends.clear()
        self._deferred_backends.clear()

    # one pass over the dirty keys ----------------------------------------------------

    def sync(self) -> SyncResult:
        fes, bids = self.desired.take_dirty()
        now = self._clock()
        due = [k for k, r in self._retry.items() if r.due <= now]
        for key in due:
            if isinstance(key, int):
                bids.add(key)
            else:
                fes.add(key)
        waiting = {k for k, r in self._retry.items() if r.due > now}
        fes = {fe for fe in fes if fe not in waiting}
        bids = {b for b in bids if b not in waiting}
        return self._reconcile(fes, bids)

    def full_pass(self, *, reread: bool = False) -> SyncResult:
        """Diff every key; with reread, first read the maps back (repairs outside changes)."""
        self.stats.full_passes += 1
        held: set[Frontend] = set()
        if reread:
            self.maps.restore()
            # A service the maps hold but could not read back whole is not in the view.
            held = {svc.frontend for svc in self.maps.contents().services}
        view, want = self.maps.state, self.desired.state
        fes = {fe for fe in view.services.keys() | want.services.keys()
               if view.services.get(fe) != want.services.get(fe)}  # fmt: skip
        fes |= held - view.services.keys() - want.services.keys()
        bids = {b for b in view.backends.keys() | want.backends.keys()
                if view.backends.get(b) != want.backends.get(b)}  # fmt: skip
        result = self._reconcile(fes, bids)
        if reread:
            # restore() queued what no service reaches (slots past a count, unused reverse NAT)
            # for the next apply; an empty diff sweeps it even when nothing else changed.
            self._apply(LbDiff())
        self.stats.repaired += result.applied
        return result

    def _reconcile(self, fes: Iterable[Frontend], bids: Iterable[int]) -> SyncResult:
        fe_keys, bid_keys = set(fes), set(bids)
        diff, deletes = self._diff(fe_keys, bid_keys)
        # A key retried while the maps already match (or its delete is deferred) is done.
        for fe in fe_keys - diff.services.keys():
            self._retry.pop(fe, None)
        for bid in bid_keys - diff.backends.keys() - deletes:
            self._retry.pop(bid, None)
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

    def _diff(self, fes: Iterable[Frontend], bids: Iterable[int]) -> tuple[LbDiff, set[int]]:
        view, want = self.maps.state, self.desired.state
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
        deletes: set[int] = set()
        # Backends a written service needs that the maps lack or hold differently: ids it
        # already had are in the view (a changed or failed one is in `bids` by its own key),
        # so only its new ids are looked at (set operations in C, not a pass over its slots).
        needed: set[int] = set()
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
        try:
            self.maps.apply(diff)
        except (LbMapsError, InvalidDiff) as e:
            self._note(e)
            return self._apply_each(diff)
        self.stats.applies += 1
        result.applied = len(diff)
        result.frontends = set(diff.services)
        for fe in diff.services:
            self._retry.pop(fe, None)
        for bid in diff.backends:
            self._retry.pop(bid, None)
        return result

    def _apply_each(self, diff: LbDiff) -> SyncResult:
        """After a failed batch: one key at a time, so one bad key cannot hold up the rest."""
        result = SyncResult()
        view, want = self.maps.state, self.desired.state
        for bid, be in diff.backends.items():
            if be is not None:
                self._apply_one(LbDiff(backends={bid: be}), bid, result)
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

    def _apply_one(self, diff: LbDiff, key: Key, result: SyncResult) -> bool:
        try:
            self.maps.apply(diff)
        except (LbMapsError, InvalidDiff) as e:
            self._note(e)
            retry = self._retry.setdefault(key, _Retry())
            delay = self._backoff[min(retry.attempts, len(self._backoff) - 1)]
            retry.attempts += 1
            retry.due = self._clock() + delay
            result.failed += 1
            return False
        self._retry.pop(key, None)
        result.applied += 1
        return True

    def _note(self, e: Exception) -> None:
        if isinstance(e, InvalidDiff):
            self.stats.invalid += 1
            log.error("Diff refused by the maps (a bug)", error=str(e))
        else:
            self.stats.failed += 1
        self.stats.last_error = str(e)

    @property
    def pending(self) -> int:
        return (
            len(self._retry) + len(self.desired.dirty_frontends) + len(self.desired.dirty_backends)
        )
