"""In-memory `LbMaps` for tests and benchmarks: `FakeLbMaps` (packed bytes, same encodings and
capacities as the kernel maps, a full map raises `MapFull` like E2BIG) and `FaultyLbMaps` (wraps
real or fake maps and fails a random part of the writes, as a failed kernel batch can).

Pure: no syscalls; the real implementation is `bpf.pinned_maps.PinnedLbMaps`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from bpf.layout import MapSizes
from bpf.lbmaps import MAP_SHAPES, LbMaps, LbMapsError, MapFull, chunks

__all__ = ["FakeLbMaps", "FaultyLbMaps"]


class FakeLbMaps(LbMaps):
    """In-memory maps of packed bytes: same encodings, same capacities, same call counting.

    Pass the `store` of a previous instance to model an agent restart over pinned maps.
    """

    def __init__(
        self, store: dict[str, dict[bytes, bytes]] | None = None, *, sizes: MapSizes | None = None
    ) -> None:
        super().__init__()
        self.store = store if store is not None else {name: {} for name in MAP_SHAPES}
        self.capacity = (sizes or MapSizes()).by_map()

    def _update(self, map_name: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        key_size, value_size, _ = MAP_SHAPES[map_name]
        capacity = self.capacity[map_name]
        table = self.store[map_name]
        for chunk in chunks(items):
            self.stats.batch_calls += 1
            for key, value in chunk:
                if len(key) != key_size or len(value) != value_size:
                    raise LbMapsError(f"{map_name}: entry of wrong size")
                if key not in table and len(table) >= capacity:
                    raise MapFull(map_name, capacity, "E2BIG")
                table[key] = value
                self.stats.entries_written += 1

    def _delete(self, map_name: str, keys: Sequence[bytes]) -> None:
        table = self.store[map_name]
        for chunk in chunks(keys):
            self.stats.batch_calls += 1
            for key in chunk:
                if table.pop(key, None) is not None:
                    self.stats.entries_deleted += 1

    def _items(self, map_name: str) -> list[tuple[bytes, bytes]]:
        return list(self.store[map_name].items())


class FaultyLbMaps(LbMaps):
    """Wraps real or fake maps; each write or delete fails with `probability`, after a random
    part of its batch has landed (as a failed kernel batch can leave it)."""

    def __init__(self, inner: LbMaps, probability: float, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability {probability} not in [0, 1]")
        self.inner = inner
        self.probability = probability
        self.faults = 0
        self._rng = random.Random(seed)

    def _fault(self, n: int) -> int | None:
        """None: no fault; else how many of the n entries to let through before failing."""
        if n == 0 or self._rng.random() >= self.probability:
            return None
        self.faults += 1
        return self._rng.randrange(n)

    def _update(self, map_name: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        cut = self._fault(len(items))
        if cut is None:
            self.inner._update(map_name, items)
            return
        self.inner._update(map_name, items[:cut])  # a full map raises its own MapFull here
        raise LbMapsError(f"{map_name}: injected fault after {cut} of {len(items)} updates")

    def _delete(self, map_name: str, keys: Sequence[bytes]) -> None:
        cut = self._fault(len(keys))
        before = self.inner.stats.entries_deleted
        try:
            self.inner._delete(map_name, keys if cut is None else keys[:cut])
        finally:
            self.stats.entries_deleted += self.inner.stats.entries_deleted - before
        if cut is None:
            return
        raise LbMapsError(f"{map_name}: injected fault after {cut} of {len(keys)} deletes")

    def _items(self, map_name: str) -> list[tuple[bytes, bytes]]:
        return self.inner._items(map_name)
