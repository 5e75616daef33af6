"""`MapStore`: the three raw map operations `LbMaps` is built on, and their error contract.

`LbMaps` (bpf/lbmaps.py) holds all the load-balancer bookkeeping and writes through one store:
`PinnedMapStore` (bpf/pinned_maps.py: the kernel's pinned maps, batched syscalls),
`MemoryMapStore` (bpf/fakemaps.py: dicts of packed bytes, the same encodings and capacities) or
`FaultyMapStore` (bpf/fakemaps.py: wraps any store and fails a random part of a batch). A store
knows maps, keys and values as bytes, nothing about services.

The contract, the same for every store: `update` writes every item, `delete` deletes every key
(a missing key is fine), `items` reads every entry; a failure raises `LbMapsError` after any part
of the batch may have landed, and a write refused because the map holds its capacity (the
kernel's E2BIG / ENOSPC) raises `MapFull`. Each store counts its calls and entries in `stats`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar, runtime_checkable

from bpf.layout import (
    BACKEND_ID_SIZE,
    BACKENDS_MAP,
    BACKENDS_MAX,
    REV_NAT_ID_SIZE,
    REVERSE_NAT_MAP,
    REVERSE_NAT_MAX,
    SERVICES_MAP,
    SERVICES_MAX,
    Lb4Backend,
    Lb4Key,
    Lb4ReverseNat,
    Lb4Service,
)

_T = TypeVar("_T")

BATCH_MAX: Final = 8192

# The maps LbMaps writes, with their key/value sizes and capacities.
MAP_SHAPES: Final = {
    SERVICES_MAP: (Lb4Key.SIZE, Lb4Service.SIZE, SERVICES_MAX),
    BACKENDS_MAP: (BACKEND_ID_SIZE, Lb4Backend.SIZE, BACKENDS_MAX),
    REVERSE_NAT_MAP: (REV_NAT_ID_SIZE, Lb4ReverseNat.SIZE, REVERSE_NAT_MAX),
}


class LbMapsError(RuntimeError):
    """A map operation failed; the view holds what surely landed. Retry the diff."""


class MapFull(LbMapsError):
    """A write was refused because the map holds `capacity` entries (E2BIG / ENOSPC).

    Not worth a hot retry: it can only succeed once something leaves that map (or the agent is
    restarted with bigger maps). Nothing was deleted to make room, and nothing will be.
    """

    def __init__(self, map_name: str, capacity: int, detail: str = "") -> None:
        message = f"{map_name}: map full ({capacity} entries)"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.map_name = map_name
        self.capacity = capacity


@dataclass
class StoreStats:
    """What a store did: map calls (batched or per element) and entries written and deleted."""

    batch_calls: int = 0  # batch syscalls (or fake equivalents)
    single_calls: int = 0  # per-element syscalls
    entries_written: int = 0
    entries_deleted: int = 0  # entries that left a map (missing keys do not count)


@runtime_checkable
class MapStore(Protocol):
    """Raw access to the LB maps by name (`MAP_SHAPES`), keys and values packed."""

    stats: StoreStats

    def update(self, map_name: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Write every item; on failure raise LbMapsError (a part may have landed), MapFull
        when the map is full."""

    def delete(self, map_name: str, keys: Sequence[bytes]) -> None:
        """Delete every key; missing keys are fine. On failure raise LbMapsError."""

    def items(self, map_name: str) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of the map, packed."""

    def close(self) -> None:
        """Release what the store holds (file descriptors); idempotent."""


def chunks(items: Sequence[_T], size: int = BATCH_MAX) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
