"""`FullMaps`: the keys a full BPF map refused, parked until there is room for them (issue 11).

Flow: `Reconciler` writes a key → `LbMaps` raises `MapFull` (the kernel's E2BIG / ENOSPC) →
`park(key, error)`: the key is not retried on the per-key backoff, which would hammer a map that
can only take it once something leaves. The reconciler asks, each pass, for the keys to try
again: `freed(room)` — as many parked keys of a map as the entries that left it may hold — and
`due(now)` — one probe per full map every `retry` seconds (room may have been made where the
agent cannot see it); a probe that lands (`landed`) calls the next one at once. A parked key
whose target is deleted is dropped (`drop`). Pure bookkeeping: no IO, the clock is passed in.

The first refusal of a map logs one warning, its last parked key leaving logs once; `report()`
is what /status, /metrics and the agent's report show.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from bpf.lbmaps import MapFull
from bpf.lbstate import BackendId, Frontend

log = structlog.get_logger("nodeagent.fullmaps")

Key = Frontend | BackendId  # a frontend, or a backend id
MAP_FULL_RETRY = 60.0  # seconds between two probes of a full map when nothing left it


@dataclass(frozen=True)
class FullMap:
    """A map that refused entries: its capacity, the keys parked, the refusals so far."""

    map_name: str
    capacity: int
    parked: int
    refused: int


class FullMaps:
    def __init__(self, *, retry: float = MAP_FULL_RETRY) -> None:
        self.retry = retry
        self.refused: Counter[str] = Counter()  # map -> writes refused as full, ever
        # key -> the map that refused it, in refusal order; a key handed back for a retry stays
        # here (and in `_trying`) until it lands, is refused again, or is dropped.
        self._parked: dict[Key, str] = {}
        self._trying: set[Key] = set()
        self._per_map: Counter[str] = Counter()
        self._capacity: dict[str, int] = {}
        self._next_probe = 0.0
        self._probing: set[Key] = set()

    def __len__(self) -> int:
        return len(self._parked)

    def waiting(self, key: Key) -> bool:
        """Parked and not handed back for a retry: leave it out of this pass."""
        return key in self._parked and key not in self._trying

    def report(self) -> list[FullMap]:
        """The maps that still have keys parked, by name."""
        return [
            FullMap(name, self._capacity[name], n, self.refused[name])
            for name, n in sorted(self._per_map.items())
            if n
        ]

    def park(self, key: Key, e: MapFull, now: float) -> None:
        self._trying.discard(key)
        self._probing.discard(key)
        self._capacity[e.map_name] = e.capacity
        self.refused[e.map_name] += 1
        self._next_probe = max(self._next_probe, now + self.retry)
        old = self._parked.get(key)
        if old == e.map_name:
            return
        if old is not None:
            self._take(key)
        if not self._per_map[e.map_name]:
            log.warning(
                "LB map full: entries it refuses wait until room is made (raise --bpf-lb-map-max)",
                map=e.map_name,
                capacity=e.capacity,
                error=str(e),
            )
        self._parked[key] = e.map_name
        self._per_map[e.map_name] += 1

    def landed(self, keys: Iterable[Key]) -> None:
        """Keys the maps took (or no longer need): not parked; a probe that landed calls the
        next one at once."""
        if not self._parked:
            return
        for key in keys:
            if key in self._probing:
                self._probing.discard(key)
                self._next_probe = 0.0  # room was made: try the next parked key now
            self._take(key)

    def drop(self, key: Key) -> None:
        """A parked key no longer wanted (its service or backend is deleted)."""
        self._take(key)

    def freed(self, room: dict[str, int], cost: Callable[[Key], int]) -> list[Key]:
        """Hand back, per map, the first parked keys that `room` freed entries may hold."""
        left = {name: n for name, n in room.items() if n > 0 and self._per_map[name]}
        if not left:
            return []
        chosen: list[Key] = []
        for key, map_name in self._parked.items():
            if key not in self._trying and left.get(map_name, 0) > 0:
                chosen.append(key)
                left[map_name] -= cost(key)
        self._trying.update(chosen)
        return chosen

    def due(self, now: float) -> list[Key]:
        """One probe per full map, every `retry` seconds (or at once after a probe landed)."""
        if not self._parked or now < self._next_probe:
            return []
        self._next_probe = now + self.retry
        probes: dict[str, Key] = {}
        for key, map_name in self._parked.items():
            if key not in self._trying:
                probes.setdefault(map_name, key)
        self._probing = set(probes.values())
        self._trying.update(self._probing)
        return list(probes.values())

    def _take(self, key: Key) -> None:
        self._trying.discard(key)
        map_name = self._parked.pop(key, None)
        if map_name is None:
            return
        self._per_map[map_name] -= 1
        if not self._per_map[map_name]:
            log.info("LB map has room again", map=map_name)
