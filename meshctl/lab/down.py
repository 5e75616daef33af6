"""``lab down``: remove everything a lab made — also without (or with half) its state file.

What to remove is the union of what the state file records and what a sweep finds by the
lab's unique names (``topology.owns_*``): processes (recorded pid + start time; the lab's
daemons by their state-directory argument; anything living in a lab namespace or cgroup), then
bpffs pins (links first, so the programs detach), cgroups (empty by then), namespaces (their
veths go with them), the lab's contexts (``<lab>-<cell>`` whose TLS directory is the lab's) and
kube admin links (``--source kubernetes``: symlinks into the lab's directory), and the state
directory. The Kubernetes API doubles are lab processes like etcd (recorded, or found by their
``--kubeconfig`` argument inside the lab's directory). Every step is idempotent; a second
``down`` finds nothing and succeeds.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from meshctl.contexts import ContextError, delete_context, load_config
from meshctl.kube.access import admin_tls_dir
from meshctl.lab import netns, procs
from meshctl.lab.kubeup import unlink_admin
from meshctl.lab.state import LabState, StateError, load_state, state_dir
from meshctl.lab.topology import CELL_NAMES, owns_cgroup, owns_netns, owns_pin

__all__ = ["DownReport", "lab_exists", "leftovers", "teardown"]


@dataclass
class DownReport:
    removed: dict[str, int] = field(default_factory=dict)  # what -> how many
    problems: list[str] = field(default_factory=list)
    had_state: bool = False

    def count(self, what: str, n: int = 1) -> None:
        if n:
            self.removed[what] = self.removed.get(what, 0) + n

    def summary(self) -> str:
        if not self.removed:
            return "nothing to remove"
        return ", ".join(f"{n} {what}" for what, n in self.removed.items())


def leftovers(name: str) -> list[str]:
    """The lab's objects found on the host by name (namespaces, cgroups, pins, state dir)."""
    found = [f"netns {n}" for n in netns.list_netns() if owns_netns(name, n)]
    found += [f"cgroup {c}" for c in netns.list_cgroups() if owns_cgroup(name, c)]
    found += [f"pin {p}" for p in netns.list_pins() if owns_pin(name, p)]
    if state_dir(name).exists():
        found.append(f"state {state_dir(name)}")
    return found


def lab_exists(name: str) -> bool:
    return bool(leftovers(name))


def teardown(
    name: str, *, config_paths: Iterable[Path], emit: Callable[[str], None] = lambda _: None
) -> DownReport:
    report = DownReport()
    directory = state_dir(name)
    state: LabState | None = None
    try:
        state = load_state(name)
        report.had_state = True
    except StateError as e:
        if directory.exists():
            emit(f"[lab {name}] {e}: sweeping by name")
    namespaces = set(state.netns() if state else []) | {
        n for n in netns.list_netns() if owns_netns(name, n)
    }
    cgroups = {c for c in netns.list_cgroups() if owns_cgroup(name, c)}
    pins = {p for p in netns.list_pins() if owns_pin(name, p)}
    if state is not None:
        for cell in state.cells:
            for node in cell.nodes:
                cgroups.add(Path(node.cgroup).name)
                pins.add(Path(node.pin_dir).name)

    # 1. processes: recorded ones, the daemons naming our directory, whatever lives in our
    # namespaces and cgroups.
    found: set[tuple[int, int]] = set()
    if state is not None:
        found |= {
            (p.pid, p.starttime)
            for p in state.processes()
            if p.pid is not None and p.starttime is not None
        }
    found |= set(procs.pids_with_argument_under(directory))
    for pid in [*(x for ns in namespaces for x in netns.netns_pids(ns)),
                *(x for cg in cgroups for x in netns.cgroup_pids(cg))]:  # fmt: skip
        starttime = procs.read_starttime(pid)
        if starttime is not None:
            found.add((pid, starttime))
    running = [p for p in found if procs.alive(*p)]
    left = procs.terminate(running)
    report.count("processes", len(running) - len(left))
    if left:
        report.problems.append(f"processes still alive: {left}")
    emit(f"[lab {name}] processes stopped ({len(running) - len(left)})")

    # Listed again: a process stopped just now may have made its pin or cgroup after the
    # first listing (an agent that was still starting).
    namespaces |= {n for n in netns.list_netns() if owns_netns(name, n)}
    cgroups |= {c for c in netns.list_cgroups() if owns_cgroup(name, c)}
    pins |= {p for p in netns.list_pins() if owns_pin(name, p)}

    # 2. pins (the programs detach), 3. cgroups (empty now), 4. namespaces.
    _remove_each(report, "pins", sorted(pins), netns.remove_pin, exists=_pin_exists)
    _remove_each(report, "cgroups", sorted(cgroups), netns.remove_cgroup, exists=_cgroup_exists)
    _remove_each(report, "namespaces", sorted(namespaces), netns.delete_netns,
                 exists=netns.netns_exists)  # fmt: skip
    emit(f"[lab {name}] pins, cgroups and namespaces removed")

    # 5. contexts, 6. the state directory.
    paths = {Path(p).expanduser() for p in config_paths}
    if state is not None:
        paths.add(Path(state.config_path))
    for path in sorted(paths):
        _remove_contexts(report, name, path, directory)
        _remove_kube_admin(report, name, path, directory)
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
        if directory.exists():
            report.problems.append(f"cannot remove {directory}")
        else:
            report.count("state directory")
    if report.removed:
        emit(f"[lab {name}] removed: {report.summary()}")
    return report


def _pin_exists(instance: str) -> bool:
    return (netns.PIN_ROOT / instance).exists()


def _cgroup_exists(name: str) -> bool:
    return (netns.CGROUP_ROOT / name).exists()


def _remove_each(
    report: DownReport,
    what: str,
    names: list[str],
    remove: Callable[[str], None],
    *,
    exists: Callable[[str], bool],
) -> None:
    for item in names:
        if not exists(item):
            continue
        try:
            if what == "cgroups":
                _empty_cgroup(item)
            remove(item)
        except (netns.NetError, OSError) as e:
            report.problems.append(str(e))
        else:
            report.count(what)


def _empty_cgroup(name: str) -> None:
    """A process that entered the cgroup after the first sweep (an ``exec`` still running)."""
    pids = netns.cgroup_pids(name)
    if pids:
        found = [(pid, st) for pid in pids if (st := procs.read_starttime(pid)) is not None]
        procs.terminate(found, timeout=5.0)


def _remove_kube_admin(report: DownReport, name: str, path: Path, directory: Path) -> None:
    """Remove the admin links of ``--source kubernetes`` (``<config dir>/kube/<lab>-<cell>/
    admin``) that point into the lab's directory; anything else there is left alone."""
    for cell in CELL_NAMES:
        link = admin_tls_dir(path, f"{name}-{cell}")
        try:
            if unlink_admin(link, directory):
                report.count("kube admin links")
        except OSError as e:
            report.problems.append(f"cannot remove {link}: {e.strerror}")


def _remove_contexts(report: DownReport, name: str, path: Path, directory: Path) -> None:
    """Delete ``<lab>-<cell>`` contexts whose certificates live in the lab's directory."""
    try:
        cfg = load_config(path)
        ours = [
            ctx.name
            for ctx in cfg.contexts.values()
            if ctx.name in {f"{name}-{cell}" for cell in CELL_NAMES}
            and ctx.tls_dir.is_relative_to(directory)
        ]
        for ctx_name in ours:
            delete_context(path, ctx_name)
            report.count("contexts")
    except ContextError as e:
        report.problems.append(f"contexts in {path}: {e}")
