"""`PinnedMapStore`: the kernel's pinned LB maps as a `MapStore`, with batched map syscalls.

Opened from `<bpffs>/cellmesh/<instance>/maps`; each map's key and value sizes are checked
against this version's layouts first (stale pins from another version are refused, not misread),
and its capacity against `sizes` when given (else the pin's own capacity is taken). A write the
kernel refuses because the map is full (E2BIG, ENOSPC) raises `MapFull`, not a plain error.
Writes go out in `BATCH_MAX` chunks through `BPF_MAP_UPDATE_BATCH` /
`BPF_MAP_DELETE_BATCH`; reads through `BPF_MAP_LOOKUP_BATCH` (see ../shared/DEPENDENCIES.md for
the hash-map quirks handled here). `batch=False` is the one-syscall-per-entry baseline.
`PinnedLbMaps(maps_dir)` is `LbMaps` over such a store (the agent's maps).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from pathlib import Path

from bpf.layout import MapSizes
from bpf.lbmaps import LbMaps
from bpf.libbpf import LibbpfError, check_syscall, lib
from bpf.mapstore import MAP_SHAPES, LbMapsError, MapFull, StoreStats, chunks

# struct bpf_map_info (linux/bpf.h): type, id, key_size, value_size, max_entries, map_flags, name.
_INFO_KEY_SIZE = 8
_INFO_VALUE_SIZE = 12
_INFO_MAX_ENTRIES = 16
_INFO_NAME = 24
# What a hash map answers to an insert when it holds max_entries (E2BIG; ENOSPC from some paths).
_FULL = (errno.E2BIG, errno.ENOSPC)


class PinnedMapStore:
    """The kernel's maps, opened from their pins (`<bpffs>/cellmesh/<instance>/maps`).

    `batch=False` writes one element per syscall (the baseline the benchmark compares with).
    """

    def __init__(
        self, maps_dir: Path, *, batch: bool = True, sizes: MapSizes | None = None
    ) -> None:
        self.stats = StoreStats()
        self.maps_dir = maps_dir
        self.batch = batch
        self._fds: dict[str, int] = {}
        self.capacity: dict[str, int] = {}
        wanted = sizes.by_map() if sizes is not None else {}
        try:
            for name, (key_size, value_size, _) in MAP_SHAPES.items():
                self._fds[name] = self._open(name, key_size, value_size, wanted.get(name))
        except BaseException:
            self.close()
            raise

    def _open(self, name: str, key_size: int, value_size: int, capacity: int | None) -> int:
        path = self.maps_dir / name
        if not path.exists():
            raise LbMapsError(f"{path}: no pinned map (is the datapath loaded?)")
        try:
            fd = check_syscall(f"bpf_obj_get {path}", lib.bpf_obj_get(bytes(path)))
        except LibbpfError as e:
            raise LbMapsError(str(e)) from e
        info = ctypes.create_string_buffer(128)
        size = ctypes.c_uint32(len(info))
        try:
            check_syscall("bpf_obj_get_info_by_fd", lib.bpf_obj_get_info_by_fd(fd, info, size))
        except LibbpfError as e:
            os.close(fd)
            raise LbMapsError(f"{path}: {e}") from e
        raw = info.raw

        def u32(offset: int) -> int:
            return int.from_bytes(raw[offset : offset + 4], "little")

        got = (u32(_INFO_KEY_SIZE), u32(_INFO_VALUE_SIZE))
        if got != (key_size, value_size):
            os.close(fd)
            raise LbMapsError(
                f"{path}: key/value sizes {got} do not match this version's "
                f"{(key_size, value_size)}; unpin the old datapath first"
            )
        pinned = u32(_INFO_MAX_ENTRIES)
        if capacity is not None and pinned != capacity:
            os.close(fd)
            raise LbMapsError(f"{path}: holds {pinned} entries at most, not {capacity}")
        self.capacity[name] = pinned
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, map_name: str) -> int:
        try:
            return self._fds[map_name]
        except KeyError:
            raise LbMapsError(f"{map_name}: maps are closed") from None

    def update(self, map_name: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        fd = self._fd(map_name)
        try:
            if not self.batch:
                for key, value in items:
                    self.stats.single_calls += 1
                    check_syscall(f"update {map_name}", lib.bpf_map_update_elem(fd, key, value, 0))
                    self.stats.entries_written += 1
                return
            for chunk in chunks(items):
                keys = b"".join(k for k, _ in chunk)
                values = b"".join(v for _, v in chunk)
                count = ctypes.c_uint32(len(chunk))
                self.stats.batch_calls += 1
                rc = lib.bpf_map_update_batch(fd, keys, values, ctypes.byref(count), None)
                if rc < 0:
                    self.stats.entries_written += count.value  # the part that landed
                check_syscall(f"batch update {map_name} ({len(chunk)} entries)", rc)
                self.stats.entries_written += len(chunk)
        except LibbpfError as e:
            if e.errno in _FULL:
                raise MapFull(map_name, self.capacity[map_name], str(e)) from e
            raise LbMapsError(str(e)) from e

    def delete(self, map_name: str, keys: Sequence[bytes]) -> None:
        fd = self._fd(map_name)
        try:
            if not self.batch:
                for key in keys:
                    self.stats.single_calls += 1
                    rc = lib.bpf_map_delete_elem(fd, key)
                    if rc < 0 and _errno(rc) == errno.ENOENT:
                        continue
                    check_syscall(f"delete {map_name}", rc)
                    self.stats.entries_deleted += 1
                return
            for chunk in chunks(keys):
                self._delete_batch(map_name, fd, chunk)
        except LibbpfError as e:
            raise LbMapsError(str(e)) from e

    def _delete_batch(self, map_name: str, fd: int, keys: Sequence[bytes]) -> None:
        # DELETE_BATCH stops at the first missing key and reports how many it deleted before
        # it: skip that key and go on with the rest.
        key_size = MAP_SHAPES[map_name][0]
        buf = ctypes.create_string_buffer(b"".join(keys), len(keys) * key_size)
        base = ctypes.addressof(buf)
        start = 0
        while start < len(keys):
            count = ctypes.c_uint32(len(keys) - start)
            self.stats.batch_calls += 1
            rc = lib.bpf_map_delete_batch(fd, base + start * key_size, ctypes.byref(count), None)
            if rc >= 0:
                self.stats.entries_deleted += len(keys) - start
                return
            err = _errno(rc)
            if err != errno.ENOENT:
                check_syscall(f"batch delete {map_name} ({len(keys) - start} entries)", rc)
            self.stats.entries_deleted += count.value
            start += count.value + 1

    def items(self, map_name: str) -> list[tuple[bytes, bytes]]:
        fd = self._fd(map_name)
        key_size, value_size, _ = MAP_SHAPES[map_name]
        out: list[tuple[bytes, bytes]] = []
        n = 4096
        token_in = ctypes.create_string_buffer(max(key_size, 8))
        token_out = ctypes.create_string_buffer(max(key_size, 8))
        first = True
        while True:
            keys = ctypes.create_string_buffer(n * key_size)
            values = ctypes.create_string_buffer(n * value_size)
            count = ctypes.c_uint32(n)
            rc = lib.bpf_map_lookup_batch(
                fd, None if first else token_in, token_out, keys, values, ctypes.byref(count), None
            )
            err = _errno(rc) if rc < 0 else 0
            if err == errno.ENOSPC and count.value == 0:
                n *= 2  # a hash bucket holds more than n entries
                continue
            if err not in (0, errno.ENOENT):
                try:
                    check_syscall(f"batch lookup {map_name}", rc)
                except LibbpfError as e:
                    raise LbMapsError(str(e)) from e
            kraw, vraw = keys.raw, values.raw
            for i in range(count.value):
                out.append(
                    (
                        kraw[i * key_size : (i + 1) * key_size],
                        vraw[i * value_size : (i + 1) * value_size],
                    )
                )
            if err == errno.ENOENT:
                return out
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False


class PinnedLbMaps(LbMaps):
    """`LbMaps` over the pinned maps in `maps_dir` (a `PinnedMapStore`); closing it closes them."""

    store: PinnedMapStore

    def __init__(
        self, maps_dir: Path, *, batch: bool = True, sizes: MapSizes | None = None
    ) -> None:
        super().__init__(PinnedMapStore(maps_dir, batch=batch, sizes=sizes))

    @property
    def capacity(self) -> dict[str, int]:
        return self.store.capacity


def _errno(rc: int) -> int:
    return ctypes.get_errno() if rc == -1 else -rc
