"""``lab stop|start|restart``: one component of a running lab, stopped and started by hand.

Flow: `resolve` turns a target (``CELL`` or ``CELL/NODE``) and a component kind into the
`Component`s it names, or raises `TargetError` naming the bad value; `stop_components`,
`start_components` and `restart_components` then act on them under the lab's lock and record
the result in the state file (atomically, ``state.save_state``): a stop signals the recorded
pid (``procs.terminate``) and marks the process ``stopped``; a start re-runs the argv recorded
at ``up`` (``procs.spawn``: same flags, same ports, same log) and records the new pid and start
time. ``wipe`` empties a stopped etcd's data directory. Waiting for a started process to serve
happens after the lock is released (``procs.wait_serving``). A started Kubernetes API double
(``kubeapi``, ``--source kubernetes``) is empty: the lab's own objects are applied to it again.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from meshctl.lab import kubeup, procs
from meshctl.lab.state import LabState, ProcessState, StateError, load_state, locked, save_state

__all__ = [
    "KINDS",
    "Component",
    "TargetError",
    "etcd_data_dir",
    "resolve",
    "restart_components",
    "start_components",
    "start_process",
    "stop_components",
    "stop_process",
]

KINDS = ("etcd", "meshapi", "agent", "kubeapi")  # kubeapi: a lab with --source kubernetes
_SERVE_PATH = {"etcd": "/health", "kubeapi": "/version", "meshapi": "/healthz", "agent": "/healthz"}

Report = Callable[[str], None]


class TargetError(ValueError):
    """A target or option that names nothing in the lab (or the wrong kind of thing)."""


@dataclass(frozen=True)
class Component:
    """One process of the lab: a cell's etcd or meshapi, or one node's agent."""

    kind: str
    cell: str
    node: str | None = None

    @property
    def label(self) -> str:
        return f"agent {self.cell}/{self.node}" if self.node else f"{self.kind} of {self.cell}"

    def process(self, state: LabState) -> ProcessState:
        if self.node is not None:
            found = state.node(self.cell, self.node).agent
        elif self.kind == "etcd":
            found = state.cell(self.cell).etcd_process
        elif self.kind == "kubeapi":
            found = state.cell(self.cell).kubeapi_process
            if found is None and state.source != "kubernetes":
                raise StateError(
                    f"lab {state.name!r} has no Kubernetes API doubles (its source is "
                    f"{state.source}; 'lab up --source kubernetes' makes them)"
                )
        else:
            found = state.cell(self.cell).meshapi_process
        if found is None:
            raise StateError(f"{self.label} was never started (lab {state.name!r} is not up)")
        return found

    def address(self, state: LabState) -> str:
        if self.node is not None:
            return state.node(self.cell, self.node).http
        cell = state.cell(self.cell)
        if self.kind == "kubeapi":
            return cell.kubeapi or ""
        return cell.etcd if self.kind == "etcd" else cell.meshapi_http


def resolve(state: LabState, target: str, kind: str) -> list[Component]:
    """The components ``target`` names: CELL (etcd, meshapi, every agent) or CELL/NODE (agent)."""
    if kind not in KINDS:
        raise TargetError(f"unknown component {kind!r} (components: {', '.join(KINDS)})")
    parts = target.split("/")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise TargetError(f"{target!r} is not CELL or CELL/NODE")
    cells = {cell.name: cell for cell in state.cells}
    if parts[0] not in cells:
        known = ", ".join(cells) or "none"
        raise TargetError(f"lab {state.name!r} has no cell {parts[0]!r} (cells: {known})")
    cell = cells[parts[0]]
    if len(parts) == 2:
        if kind != "agent":
            raise TargetError(
                f"{target!r} names a node, but {kind} runs once per cell: give the cell alone "
                f"({cell.name!r})"
            )
        nodes = [node.name for node in cell.nodes]
        if parts[1] not in nodes:
            raise TargetError(
                f"cell {cell.name!r} has no node {parts[1]!r} (nodes: {', '.join(nodes)})"
            )
        return [Component("agent", cell.name, parts[1])]
    if kind == "agent":
        return [Component("agent", cell.name, node.name) for node in cell.nodes]
    return [Component(kind, cell.name)]


def running(process: ProcessState) -> bool:
    return procs.alive(process.pid, process.starttime)


def _liveness(process: ProcessState) -> procs.ProcessCheck:
    return lambda: running(process)


def stop_process(
    process: ProcessState, what: str, *, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0
) -> bool:
    """Stop the recorded process (``sig``, then SIGKILL after ``timeout``) and mark it stopped.

    Returns whether it was running.
    """
    was_running = running(process)
    if was_running and process.pid is not None and process.starttime is not None:
        left = procs.terminate([(process.pid, process.starttime)], timeout=timeout, first=sig)
        if left:
            raise procs.ProcessError(f"{what} (pid {process.pid}) did not exit")
    process.pid = process.starttime = None
    process.stopped = True
    return was_running


def start_process(process: ProcessState) -> bool:
    """Run the recorded argv again unless the process runs; record it. Returns whether started."""
    if running(process):
        return False
    cgroup = Path(process.cgroup) if process.cgroup else None
    process.pid, process.starttime = procs.spawn(
        process.argv, log=Path(process.log), cgroup=cgroup, env=process.env
    )
    process.stopped = False
    return True


def etcd_data_dir(process: ProcessState) -> Path:
    """The ``--data-dir`` of an etcd command line."""
    argv = process.argv
    for i, arg in enumerate(argv):
        if arg == "--data-dir" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--data-dir="):
            return Path(arg.split("=", 1)[1])
    raise StateError(f"no --data-dir in the recorded etcd command line: {argv}")


def _wipe(state: LabState, component: Component) -> Path:
    """Empty the data directory of a stopped etcd (the directory itself stays, mode 0700)."""
    process = component.process(state)
    if running(process):
        raise TargetError(
            f"{component.label} is running (pid {process.pid}): stop it first, or use "
            f"'restart --wipe'"
        )
    directory = etcd_data_dir(process)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return directory


def _check_wipe(components: list[Component], wipe: bool) -> None:
    if wipe and any(c.kind != "etcd" for c in components):
        kind = next(c.kind for c in components if c.kind != "etcd")
        raise TargetError(f"--wipe empties etcd's data directory; it does not apply to {kind}")


def _stop_all(
    state: LabState,
    components: list[Component],
    *,
    sig: signal.Signals,
    timeout: float,
    wipe: bool,
    report: Report,
) -> None:
    for component in components:
        process = component.process(state)
        pid = process.pid
        if stop_process(process, component.label, sig=sig, timeout=timeout):
            report(f"{component.label} stopped (pid {pid}, {sig.name})")
        else:
            report(f"{component.label} was not running")
        if wipe:
            report(f"{component.label}: data directory {_wipe(state, component)} emptied")


def _start_all(
    state: LabState, components: list[Component], *, report: Report
) -> list[procs.ServeTarget]:
    targets = []
    for component in components:
        process = component.process(state)
        if start_process(process):
            report(f"{component.label} started (pid {process.pid})")
        else:
            report(f"{component.label} already running (pid {process.pid})")
        targets.append(
            procs.ServeTarget(
                component.label,
                component.address(state),
                _liveness(process),
                Path(process.log),
            )
        )
    return targets


def _wait(components: list[Component], targets: list[procs.ServeTarget], timeout: float) -> None:
    if targets:
        procs.wait_serving(
            targets, path=_SERVE_PATH[components[0].kind], timeout=timeout, what="serving"
        )


@contextlib.contextmanager
def _acting_on(
    name: str, target: str, kind: str, *, wipe: bool
) -> Iterator[tuple[LabState, list[Component]]]:
    """The lab's state and the components ``target`` names, under the lab's lock; the state is
    saved afterwards, also when acting on them failed half-way."""
    with locked(name):
        state = load_state(name)
        components = resolve(state, target, kind)
        _check_wipe(components, wipe)
        try:
            yield state, components
        finally:
            save_state(state)


def stop_components(
    name: str,
    target: str,
    kind: str,
    *,
    sig: signal.Signals = signal.SIGTERM,
    timeout: float = 10.0,
    wipe: bool = False,
    report: Report = lambda _: None,
) -> list[Component]:
    """Stop what ``target`` names (and empty etcd's data directory with ``wipe``)."""
    with _acting_on(name, target, kind, wipe=wipe) as (state, components):
        _stop_all(state, components, sig=sig, timeout=timeout, wipe=wipe, report=report)
    return components


def start_components(
    name: str,
    target: str,
    kind: str,
    *,
    timeout: float = 30.0,
    wipe: bool = False,
    report: Report = lambda _: None,
) -> list[Component]:
    """Start what ``target`` names again (after emptying etcd's data directory with ``wipe``);
    returns once each serves HTTP."""
    with _acting_on(name, target, kind, wipe=wipe) as (state, components):
        if wipe:
            for component in components:
                directory = _wipe(state, component)
                report(f"{component.label}: data directory {directory} emptied")
        targets = _start_all(state, components, report=report)
    _wait(components, targets, timeout)
    _reseed(name, components, report)
    return components


def _reseed(name: str, components: list[Component], report: Report) -> None:
    """A started API double is empty: write the lab's own objects into it again."""
    cells = [c.cell for c in components if c.kind == "kubeapi"]
    if cells:
        count = kubeup.seed(load_state(name), cells=cells)
        report(f"{count} lab objects written again into the API double of {', '.join(cells)}")


def restart_components(
    name: str,
    target: str,
    kind: str,
    *,
    sig: signal.Signals = signal.SIGTERM,
    timeout: float = 30.0,
    wipe: bool = False,
    report: Report = lambda _: None,
) -> list[Component]:
    """Stop, (wipe,) and start again what ``target`` names; returns once each serves HTTP."""
    with _acting_on(name, target, kind, wipe=wipe) as (state, components):
        _stop_all(state, components, sig=sig, timeout=timeout, wipe=wipe, report=report)
        targets = _start_all(state, components, report=report)
    _wait(components, targets, timeout)
    _reseed(name, components, report)
    return components
