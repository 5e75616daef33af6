"""The lab's state file: what it made, written before it makes it.

``/run/cellmesh/lab/<name>/state.json`` (tmpfs: a reboot forgets the lab with everything it
made). ``up`` writes the whole plan — every namespace, cgroup, pin and context it is about to
create — before creating any of it, then each process's pid and start time as soon as it runs;
``LabDriver`` adds a pod to the file before creating it and drops it only after it is gone. So
``down`` always knows at least as much as exists. Writes are atomic (temporary file + rename);
read-modify-write cycles hold an exclusive ``flock`` on ``<dir>/lock``.

``source`` says how the cells' meshapis learn nodes and endpoints: ``standalone`` (the agents
register them) or ``kubernetes`` (each cell has a Kubernetes API double, ``kubeapi``, that the
lab fills with Node, Service and EndpointSlice objects and its meshapi watches).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ValidationError

__all__ = [
    "SOURCES",
    "STATE_ROOT",
    "CellState",
    "LabState",
    "NodeState",
    "PodState",
    "PortState",
    "ProcessState",
    "StateError",
    "load_state",
    "locked",
    "save_state",
    "state_dir",
]

STATE_ROOT = Path("/run/cellmesh/lab")
STATE_FILE = "state.json"
STATE_VERSION = 1
SOURCES = ("standalone", "kubernetes")


class StateError(RuntimeError):
    """The state file is missing, unreadable or not ours; the message names it."""


class ProcessState(BaseModel):
    """A process the lab runs: how to start it again, and how to know it (pid + start time).

    ``stopped``: stopped on purpose (``lab stop``); its pid is then None. A recorded pid that no
    longer runs without ``stopped`` is a process that exited by itself.
    """

    argv: list[str]
    log: str
    env: dict[str, str] = {}  # added to the lab's environment (a DaemonSet's env, NODE_NAME)
    cgroup: str | None = None
    pid: int | None = None
    starttime: int | None = None
    stopped: bool = False


class PortState(BaseModel):
    name: str
    port: int
    protocol: str = "TCP"


class PodState(BaseModel):
    name: str
    host: int  # last octet of the address in the node's /24
    address: str
    netns: str
    veth: str
    services: list[tuple[str, str]] = []
    ports: list[PortState] = []
    ready: bool = True
    process: ProcessState | None = None


class NodeState(BaseModel):
    name: str
    index: int
    netns: str
    underlay_veth: str  # the underlay end of the node's uplink (the node end is eth0)
    address: str  # on the underlay, a /16
    pod_cidr: str
    gateway: str  # the pod bridge's address, in pod_cidr
    cgroup: str  # absolute path of the cgroup v2 directory
    pin_dir: str
    tls_dir: str
    workloads: str
    http: str  # the agent's HOST:PORT
    agent: ProcessState | None = None
    pods: list[PodState] = []


class CellState(BaseModel):
    name: str
    id: int
    pod_cidr: str
    node_cidr: str
    context: str
    etcd: str  # client endpoint HOST:PORT
    etcd_peer: str  # peer endpoint HOST:PORT (a one-member cluster, still bound)
    meshapi: str  # gRPC HOST:PORT
    meshapi_http: str
    meshapi_tls: str
    admin_tls: str
    etcd_process: ProcessState | None = None
    meshapi_process: ProcessState | None = None
    nodes: list[NodeState] = []
    # source kubernetes: the cell's API double (HOST:PORT), its process and the cell's own
    # kubeconfig (one context, current); kube_admin: meshctl's admin TLS directory for the kube
    # context (`meshctl.kube.access.admin_tls_dir`), a symlink to admin_tls made by the lab.
    kubeapi: str | None = None
    kubeapi_process: ProcessState | None = None
    kubeconfig: str | None = None
    kube_admin: str | None = None


class LabState(BaseModel):
    version: int = STATE_VERSION
    name: str
    phase: str = "creating"  # creating -> up; "failed" while a failed up is being undone
    created: float
    config_path: str  # the meshctl contexts file holding the lab's contexts
    underlay: str
    ca_dir: str
    source: str = "standalone"  # one of SOURCES
    kubeconfig: str | None = None  # source kubernetes: every cell's context, named as `context`
    cells: list[CellState] = []

    def cell(self, name: str) -> CellState:
        for cell in self.cells:
            if cell.name == name:
                return cell
        known = ", ".join(c.name for c in self.cells)
        raise StateError(f"lab {self.name!r} has no cell {name!r} (cells: {known})")

    def node(self, cell: str, name: str) -> NodeState:
        found = self.cell(cell)
        for node in found.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in found.nodes)
        raise StateError(f"cell {cell!r} of lab {self.name!r} has no node {name!r} ({known})")

    def netns(self) -> list[str]:
        names = [self.underlay]
        for cell in self.cells:
            for node in cell.nodes:
                names.append(node.netns)
                names.extend(pod.netns for pod in node.pods)
        return names

    def processes(self) -> list[ProcessState]:
        found: list[ProcessState | None] = []
        for cell in self.cells:
            found += [cell.etcd_process, cell.kubeapi_process, cell.meshapi_process]
            for node in cell.nodes:
                found.append(node.agent)
                found.extend(pod.process for pod in node.pods)
        return [p for p in found if p is not None]


def state_dir(name: str) -> Path:
    return STATE_ROOT / name


def load_state(name: str) -> LabState:
    path = state_dir(name) / STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StateError(f"no lab named {name!r} (no {path})") from None
    except OSError as e:
        raise StateError(f"cannot read {path}: {e.strerror}") from e
    try:
        state = LabState.model_validate_json(text)
    except ValidationError as e:
        raise StateError(f"{path} is not a lab state file: {e.error_count()} error(s)") from None
    if state.name != name:
        raise StateError(f"{path} belongs to lab {state.name!r}, not {name!r}")
    return state


def save_state(state: LabState) -> None:
    directory = state_dir(state.name)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{STATE_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(state.model_dump_json(indent=1) + "\n")
        os.replace(tmp, directory / STATE_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Hold the lab's lock (one read-modify-write of the state at a time)."""
    directory = state_dir(name)
    if not directory.is_dir():  # never recreate the directory of a lab that is gone
        raise StateError(f"no lab named {name!r} (no {directory})")
    with open(directory / "lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
