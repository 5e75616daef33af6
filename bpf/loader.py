"""Load the socket load balancer, pin its maps and links, attach it to a cgroup v2 directory.

Pins live under `<bpffs>/cellmesh/<instance>/` — `maps/<map>` and `links/<program>` — so the
datapath outlives the agent: a second `SockLbLoader.attach` reuses the pinned maps (libbpf reuses
a compatible map pinned at the map's pin path) and swaps the program behind each pinned link
(`bpf_link__update_program`), so there is never a second attachment nor a gap. `detach()` removes
the link pins (the kernel detaches when the last reference goes), `unpin()` the maps.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bpf.layout import MAP_NAMES, PROGRAMS
from bpf.libbpf import LibbpfError, check_int, check_ptr, lib, take_log

BPFFS = Path("/sys/fs/bpf")


class LoaderError(RuntimeError):
    """Loading or attaching failed; the message names the step and carries libbpf's log."""


def ensure_bpffs(root: Path = BPFFS) -> None:
    """Mount bpffs at root unless it already is one (a fresh machine has none)."""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) > 2 and parts[1] == str(root) and parts[2] == "bpf":
                return
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", str(root)], check=True, capture_output=True)


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
            for name in MAP_NAMES:
                m = check_ptr(
                    f"find map {name}", lib.bpf_object__find_map_by_name(obj, name.encode())
                )
                check_int(
                    f"pin path of {name}",
                    lib.bpf_map__set_pin_path(m, bytes(self.maps_dir / name)),
                )
            check_int("bpf_object__load", lib.bpf_object__load(obj))
        except LibbpfError as e:
            self.close()
            raise LoaderError(f"loading {self.object_path}: {e}") from e

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
