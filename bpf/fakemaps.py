"""In-memory map stores for tests and benchmarks, under the one `LbMaps` engine.

`MemoryMapStore`: dicts of packed bytes, the same encodings and capacities as the kernel maps (a
full map raises `MapFull` like E2BIG). `FaultyMapStore`: wraps any `MapStore` (real or in
memory) and fails a random part of the writes, as a failed kernel batch can. `FakeLbMaps` and
`FaultyLbMaps` build an `LbMaps` over them; they add no logic of their own.

Pure: no syscalls; the kernel's store is `bpf.pinned_maps.PinnedMapStore`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from bpf.layout import MapSizes
from bpf.lbmaps import LbMaps
from bpf.mapstore import MAP_SHAPES, LbMapsError, MapFull, MapStore, StoreStats, chunks

__all__ = ["FakeLbMaps", "FaultyLbMaps", "FaultyMapStore", "MemoryMapStore"]

Tables = dict[str, dict[bytes, bytes]]


class MemoryMapStore:
    """The LB maps as dicts of packed bytes: same encodings, same capacities, same call counting.

    `store[map_name]` is that map's table (tests edit it to model drift).
    """

    def __init__(self, tables: Tables | None = None, *, sizes: MapSizes | None = None) -> None:
        self.tables = tables if tables is not None else {name: {} for name in MAP_SHAPES}
        self.capacity = (sizes or MapSizes()).by_map()
        self.stats = StoreStats()

    def reopened(self, *, sizes: MapSizes | None = None) -> MemoryMapStore:
        """The same maps as a new process finds them (as after an agent restart): the same
        tables and capacities (unless `sizes` says otherwise), counters from zero."""
        again = MemoryMapStore(self.tables, sizes=sizes)
        if sizes is None:
            again.capacity = dict(self.capacity)
        return again

    def __getitem__(self, map_name: str) -> dict[bytes, bytes]:
        return self.tables[map_name]

    def update(self, map_name: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        key_size, value_size, _ = MAP_SHAPES[map_name]
        capacity = self.capacity[map_name]
        table = self.tables[map_name]
        for chunk in chunks(items):
            self.stats.batch_calls += 1
            for key, value in chunk:
                if len(key) != key_size or len(value) != value_size:
                    raise LbMapsError(f"{map_name}: entry of wrong size")
                if key not in table and len(table) >= capacity:
                    raise MapFull(map_name, capacity, "E2BIG")
                table[key] = value
                self.stats.entries_written += 1

    def delete(self, map_name: str, keys: Sequence[bytes]) -> None:
        table = self.tables[map_name]
        for chunk in chunks(keys):
            self.stats.batch_calls += 1
            for key in chunk:
                if table.pop(key, None) is not None:
                    self.stats.entries_deleted += 1

    def items(self, map_name: str) -> list[tuple[bytes, bytes]]:
        return list(self.tables[map_name].items())

    def close(self) -> None:
        """Nothing to release."""


class FaultyMapStore:
    """Wraps a store; each write or delete fails with `probability`, after a random part of its
    batch has landed (as a failed kernel batch can leave it).

    Its calls are the inner store's: `stats` is the inner store's counters.
    """

    def __init__(self, inner: MapStore, probability: float, seed: int = 0) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability {probability} not in [0, 1]")
        self.inner = inner
        self.stats = inner.stats
        self.probability = probability
        self.faults = 0
        self._rng = random.Random(seed)

    def _fault(self, n: int) -> int | None:
        """None: no fault; else how many of the n entries to let through before failing."""
        if n == 0 or self._rng.random() >= self.probability:
            return None
        self.faults += 1
        return self._rng.randrange(n)

    def update(self, map_name: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        cut = self._fault(len(items))
        if cut is None:
            self.inner.update(map_name, items)
            return
        self.inner.update(map_name, items[:cut])  # a full map raises its own MapFull here
        raise LbMapsError(f"{map_name}: injected fault after {cut} of {len(items)} updates")

    def delete(self, map_name: str, keys: Sequence[bytes]) -> None:
        cut = self._fault(len(keys))
        self.inner.delete(map_name, keys if cut is None else keys[:cut])
        if cut is None:
            return
        raise LbMapsError(f"{map_name}: injected fault after {cut} of {len(keys)} deletes")

    def items(self, map_name: str) -> list[tuple[bytes, bytes]]:
        return self.inner.items(map_name)

    def close(self) -> None:
        self.inner.close()


class FakeLbMaps(LbMaps):
    """`LbMaps` over a `MemoryMapStore` (a new one, or one of `sizes`).

    Pass the `store` of a previous instance (or its tables) to model an agent restart over
    pinned maps: the same maps, fresh counters.
    """

    store: MemoryMapStore

    def __init__(
        self, store: MemoryMapStore | Tables | None = None, *, sizes: MapSizes | None = None
    ) -> None:
        if isinstance(store, MemoryMapStore):
            super().__init__(store.reopened(sizes=sizes))
        else:
            super().__init__(MemoryMapStore(store, sizes=sizes))

    @property
    def capacity(self) -> dict[str, int]:
        return self.store.capacity


class FaultyLbMaps(LbMaps):
    """`LbMaps` over a `FaultyMapStore` wrapping the store of `inner` (one engine: `inner`'s own
    bookkeeping is not used; read the maps through either)."""

    store: FaultyMapStore

    def __init__(self, inner: LbMaps, probability: float, seed: int = 0) -> None:
        super().__init__(FaultyMapStore(inner.store, probability, seed))

    @property
    def faults(self) -> int:
        return self.store.faults

    @property
    def probability(self) -> float:
        return self.store.probability

    @probability.setter
    def probability(self, value: float) -> None:
        self.store.probability = value
