"""Load the socket load balancer, pin its maps and links, attach it to a cgroup v2 directory.

Pins live under `<bpffs>/cellmesh/<instance>/` — `maps/<map>` and `links/<program>` — so the
datapath outlives the agent: a second `SockLbLoader.attach` reuses the pinned maps (libbpf reuses
a compatible map pinned at the map's pin path) and swaps the program behind each pinned link
(`bpf_link__update_program`), so there is never a second attachment nor a gap. `detach()` removes
the link pins (the kernel detaches when the last reference goes), `unpin()` the maps.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bpf.layout import MAP_NAMES, PROGRAMS, MapSizes
from bpf.libbpf import (
    LibbpfError,
    check_int,
    check_ptr,
    lib,
    pinned_map_max_entries,
    take_log,
)

BPFFS = Path("/sys/fs/bpf")


class LoaderError(RuntimeError):
    """Loading or attaching failed; the message names the step and carries libbpf's log."""


BPF_FS_MAGIC = 0xCAFE4A11  # statfs f_type of a bpffs (linux/magic.h)
BPFFS_LOCK = Path("/run/cellmesh-bpffs.lock")  # outside bpffs: it exists before the mount

_libc = ctypes.CDLL(None, use_errno=True)
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_libc.statfs.restype = ctypes.c_int


def is_bpffs(path: Path) -> bool:
    """path lies on a bpffs, by its filesystem type (statfs), not by what /proc says."""
    # struct statfs starts with f_type (a long on 64-bit Linux); 256 bytes hold the whole struct.
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return False
        raise LoaderError(f"statfs {path}: {os.strerror(err)}")
    f_type = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return f_type == BPF_FS_MAGIC


def ensure_bpffs(root: Path = BPFFS, *, lock: Path = BPFFS_LOCK) -> None:
    """Mount bpffs at root unless it already is one (a fresh machine has none) -- at most once.

    Agents that start together would each find no bpffs and stack one mount per agent; the
    check and the mount run under an exclusive flock on `lock` (outside bpffs), so only the
    first one mounts and the others find its bpffs by the directory's filesystem type.
    """
    if is_bpffs(root):
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        if is_bpffs(root):
            return
        root.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "bpf", "bpf", str(root)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise LoaderError(f"mounting bpffs at {root}: {done.stderr.strip() or done.returncode}")


def pin_root(instance: str, *, bpffs: Path = BPFFS) -> Path:
    if not instance or "/" in instance or instance.startswith("."):
        raise LoaderError(f"bad instance name {instance!r}")
    return bpffs / "cellmesh" / instance


@dataclass
class SockLbLoader:
    """One loaded copy of the socket LB object, pinned as `instance`."""

    object_path: Path
    instance: str
    bpffs: Path = BPFFS
    sizes: MapSizes = field(default_factory=MapSizes)  # the LB maps' max_entries
    _obj: int = 0
    _links: list[int] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return pin_root(self.instance, bpffs=self.bpffs)

    @property
    def maps_dir(self) -> Path:
        return self.root / "maps"

    @property
    def links_dir(self) -> Path:
        return self.root / "links"

    def load(self) -> None:
        """Open and load the object; maps already pinned for this instance are reused."""
        if not self.object_path.is_file():
            raise LoaderError(f"{self.object_path}: no such BPF object (run `make setup`)")
        ensure_bpffs(self.bpffs)
        self.maps_dir.mkdir(parents=True, exist_ok=True)
        self.links_dir.mkdir(parents=True, exist_ok=True)
        take_log()
        try:
            obj = check_ptr(
                "bpf_object__open_file", lib.bpf_object__open_file(bytes(self.object_path), None)
            )
            self._obj = obj
            sizes = self.sizes.by_map()
            for name in MAP_NAMES:
                m = check_ptr(
                    f"find map {name}", lib.bpf_object__find_map_by_name(obj, name.encode())
                )
                if name in sizes:
                    check_int(
                        f"max_entries of {name}", lib.bpf_map__set_max_entries(m, sizes[name])
                    )
                check_int(
                    f"pin path of {name}",
                    lib.bpf_map__set_pin_path(m, bytes(self.maps_dir / name)),
                )
            self._check_pinned_sizes(sizes)
            check_int("bpf_object__load", lib.bpf_object__load(obj))
        except (LibbpfError, LoaderError) as e:
            self.close()
            if isinstance(e, LoaderError):
                raise
            raise LoaderError(f"loading {self.object_path}: {e}") from e

    def _check_pinned_sizes(self, sizes: dict[str, int]) -> None:
        """Refuse, with what to do, pinned maps of another size (libbpf cannot reuse them).

        Not migrated: the pinned maps are the live datapath of the agent's previous run, and
        copying them into new maps would mean a second copy of up to millions of entries, a
        window in which the two differ, and (when shrinking) entries that do not fit. A resize
        is the operator's decision; until it is made, the pinned datapath keeps serving.
        """
        for name, want in sizes.items():
            pin = self.maps_dir / name
            if not pin.exists():
                continue
            have = pinned_map_max_entries(bytes(pin))
            if have != want:
                raise LoaderError(
                    f"pinned map {pin} holds {have} entries at most, but this agent was "
                    f"started for {want} (--bpf-lb-map-max); the pinned datapath is left as it "
                    f"is. Either start the agent with --bpf-lb-map-max {have}, or resize: stop "
                    f"the agent, remove the pins (`rm -r {self.root}`: services on this node "
                    f"stop being translated until the agent has synced again) and start it"
                )

    def attach(self, cgroup: Path) -> None:
        """Attach every program to cgroup, once: a pinned link is updated, not duplicated."""
        if not self._obj:
            self.load()
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in (spec.name for spec in PROGRAMS):
                prog = check_ptr(
                    f"find program {name}",
                    lib.bpf_object__find_program_by_name(self._obj, name.encode()),
                )
                pin = self.links_dir / name
                if pin.exists():
                    link = check_ptr(f"open pinned link {pin}", lib.bpf_link__open(bytes(pin)))
                    self._links.append(link)
                    check_int(f"update link {name}", lib.bpf_link__update_program(link, prog))
                else:
                    link = check_ptr(
                        f"attach {name} to {cgroup}", lib.bpf_program__attach_cgroup(prog, fd)
                    )
                    self._links.append(link)
                    check_int(f"pin link {name}", lib.bpf_link__pin(link, bytes(pin)))
        except LibbpfError as e:
            raise LoaderError(f"attaching to {cgroup}: {e}") from e
        finally:
            os.close(fd)

    def map_path(self, name: str) -> Path:
        return self.maps_dir / name

    def close(self) -> None:
        """Drop this process's references; pinned maps and links stay (stop is not remove)."""
        for link in self._links:
            # Closes our fd only; a pinned link stays attached (bpf_link__disconnect would
            # leak the fd instead and keep the link alive after its pin is removed).
            lib.bpf_link__destroy(link)
        self._links.clear()
        if self._obj:
            lib.bpf_object__close(self._obj)
            self._obj = 0
        take_log()

    def detach(self) -> None:
        """Remove the link pins: the programs detach once no process holds the links."""
        self.close()
        if self.links_dir.exists():
            for pin in self.links_dir.iterdir():
                pin.unlink()

    def unpin(self) -> None:
        """Detach and remove every pin of this instance (idempotent)."""
        self.detach()
        if self.root.exists():
            shutil.rmtree(self.root)
        parent = self.root.parent
        if parent.exists() and not any(parent.iterdir()):
            parent.rmdir()


def libbpf_version() -> str:
    fn = lib.libbpf_version_string
    fn.restype = ctypes.c_char_p
    return str(fn().decode())
