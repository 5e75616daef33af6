"""``lab up``: plan, record, then build: PKI, namespaces, cgroups, etcd, meshapi, agents, pods.

With ``--source kubernetes`` (``state.source``) each cell also gets a Kubernetes API double
between etcd and meshapi, filled with the lab's objects (``kubeup``, ``kubeseed``); meshapi
watches it (``--source kubernetes``) and the agents run as a DaemonSet runs them
(``--node-name-from-env NODE_NAME --registration kubernetes``, no workloads file).

Flow: `plan_state` (topology + free loopback ports → a `LabState` naming everything) →
`save_state` (before anything exists) → `build`, one step at a time, each reported by
`Progress` as one line on stderr; the state is saved again as each process starts. A step that
fails raises `UpError` naming the step (and the log of a process that exited); the command then
moves the logs out of the state directory (`keep_logs`, to ``FAILED_LOGS/<lab>``) and tears
down what was made (``down.teardown``). The control plane listens on 127.0.0.1 only; the data
plane lives in the lab's namespaces (``netns``).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from certs import CertError, Role, create_ca, issue_certificate
from meshcore.localetcd import free_loopback_port
from meshctl.contexts import Context, ContextError, add_context
from meshctl.lab import kubeup, netns, pods, procs
from meshctl.lab.argv import agent_argv, etcd_argv, meshapi_argv
from meshctl.lab.state import (
    STATE_ROOT,
    CellState,
    LabState,
    NodeState,
    PodState,
    PortState,
    ProcessState,
    save_state,
    state_dir,
)
from meshctl.lab.topology import DEMO_SERVICE, ECHO_PORT, LabPlan

__all__ = [
    "FAILED_LOGS",
    "Progress",
    "UpError",
    "build",
    "console_script",
    "keep_logs",
    "logs_dir",
    "plan_state",
]

# The logs of a failed ``up`` survive its clean-up here (``<lab>/``), until the next failed up
# of the same lab replaces them (or a reboot: /run is tmpfs). ``down`` leaves them alone.
FAILED_LOGS = STATE_ROOT.parent / "lab-failed"

TRUST_DOMAIN_SUFFIX = "lab.cellmesh.local"


class UpError(RuntimeError):
    """A step of ``up`` failed; ``step`` names it, the message says why; ``log`` is the log of
    the process whose exit failed it, if one did."""

    def __init__(self, step: str, message: str, *, log: Path | None = None) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.log = log


class Progress:
    """One line per finished step on stderr: what was done and how long it took."""

    def __init__(self, lab: str, emit: Callable[[str], None]) -> None:
        self.lab = lab
        self.emit = emit

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except UpError:
            raise
        except Exception as e:  # every failure of a step is reported with the step's name
            log = e.log if isinstance(e, procs.ProcessError) else None
            raise UpError(what, str(e) or type(e).__name__, log=log) from e
        self.emit(f"[lab {self.lab}] {what} ({time.monotonic() - started:.1f}s)")


def console_script(name: str) -> str:
    """A console script of this installation (next to the running interpreter)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            raise UpError("prerequisites", f"{name} is not installed next to {sys.executable}")
        return found
    return str(path)


class _Ports:
    """Free loopback ports, never the same one twice in a lab."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def next(self) -> int:
        while True:
            port = free_loopback_port()
            if port not in self.taken:
                self.taken.add(port)
                return port


def plan_state(plan: LabPlan, *, config_path: Path, source: str = "standalone") -> LabState:
    directory = state_dir(plan.name)
    ports = _Ports()
    cells = []
    for cell in plan.cells:
        nodes = []
        for node in (n for n in plan.nodes if n.cell == cell.name):
            node_dir = directory / cell.name / node.name
            nodes.append(
                NodeState(
                    name=node.name,
                    index=node.index,
                    netns=node.netns,
                    underlay_veth=node.underlay_veth,
                    address=str(node.address),
                    pod_cidr=str(node.pod_cidr),
                    gateway=str(node.gateway),
                    cgroup=str(netns.CGROUP_ROOT / node.cgroup_name),
                    pin_dir=str(netns.PIN_ROOT / node.pin_instance),
                    tls_dir=str(directory / "pki" / f"{cell.name}-{node.name}"),
                    workloads=str(node_dir / "workloads.yaml"),
                    http=f"127.0.0.1:{ports.next()}",
                    pods=[
                        PodState(
                            name=pod.name,
                            host=int(pod.address) - int(node.pod_cidr.network_address),
                            address=str(pod.address),
                            netns=pod.netns,
                            veth=pod.veth,
                            services=[DEMO_SERVICE],
                            ports=[
                                PortState(name="http", port=ECHO_PORT, protocol="TCP"),
                                PortState(name="udp", port=ECHO_PORT, protocol="UDP"),
                            ],
                        )
                        for pod in plan.pods
                        if pod.cell == cell.name and pod.node == node.name
                    ],
                )
            )
        cells.append(
            CellState(
                name=cell.name,
                id=cell.id,
                pod_cidr=str(cell.pod_cidr),
                node_cidr=str(cell.node_cidr),
                context=plan.context(cell.name),
                etcd=f"127.0.0.1:{ports.next()}",
                etcd_peer=f"127.0.0.1:{ports.next()}",
                meshapi=f"127.0.0.1:{ports.next()}",
                meshapi_http=f"127.0.0.1:{ports.next()}",
                meshapi_tls=str(directory / "pki" / f"{cell.name}-meshapi"),
                admin_tls=str(directory / "pki" / f"{cell.name}-admin"),
                nodes=nodes,
            )
        )
    state = LabState(
        name=plan.name,
        created=time.time(),
        config_path=str(config_path),
        underlay=plan.underlay_netns,
        ca_dir=str(directory / "pki" / "ca"),
        source=source,
        cells=cells,
    )
    if source == "kubernetes":
        state.kubeconfig = str(directory / "kubeconfig")
        for cell_state in state.cells:
            kubeup.plan_cell(state, cell_state, f"127.0.0.1:{ports.next()}")
    return state


def logs_dir(name: str) -> Path:
    return state_dir(name) / "logs"


def keep_logs(name: str) -> Path | None:
    """Move the logs of lab ``name`` to ``FAILED_LOGS/<name>`` (before its clean-up deletes
    them); returns where, or None when there were none or they could not be moved. On one
    filesystem (both under /run) it is a rename: running processes keep writing to them."""
    source = logs_dir(name)
    if not source.is_dir():
        return None
    kept = FAILED_LOGS / name
    try:
        FAILED_LOGS.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.rmtree(kept, ignore_errors=True)
        shutil.move(source, kept)
    except OSError:
        return None
    return kept


def build(state: LabState, *, progress: Progress, wait: bool, timeout: float) -> None:
    """Create everything the state names; on failure raise `UpError` (the caller cleans up)."""
    directory = state_dir(state.name)
    logs = logs_dir(state.name)
    nodes = [(cell, node) for cell in state.cells for node in cell.nodes]
    all_pods = [(cell, node, pod) for cell, node in nodes for pod in node.pods]
    with progress.step("prerequisites"):
        meshapi_bin, agent_bin = console_script("meshapi"), console_script("nodeagent")
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd is not installed (Debian etcd-server)")
        if not (netns.CGROUP_ROOT / "cgroup.procs").exists():
            raise RuntimeError(f"no cgroup v2 hierarchy at {netns.CGROUP_ROOT}")
    with progress.step("state recorded"):
        save_state(state)
    with progress.step(f"certificates (1 CA, {len(state.cells) * 2 + len(nodes)} leaves)"):
        _issue_certificates(state)
    with progress.step(
        f"namespaces (underlay, {len(nodes)} nodes, {len(all_pods)} pods) and cgroups"
    ):
        netns.add_underlay(state.underlay)
        for _, node in nodes:
            netns.add_node(
                netns=node.netns,
                underlay=state.underlay,
                underlay_veth=node.underlay_veth,
                address=f"{node.address}/16",
                gateway=f"{node.gateway}/{node.pod_cidr.rsplit('/', 1)[1]}",
            )
            netns.make_cgroup(Path(node.cgroup).name)
            for pod in node.pods:
                pods.create_pod(node, pod)
    with progress.step(f"etcd ({len(state.cells)})"):
        for cell in state.cells:
            argv = etcd_argv(cell, directory)
            cell.etcd_process = _start(argv, logs / f"{cell.name}-etcd.log")
        save_state(state)
        procs.wait_serving(
            [_target(f"etcd of {c.name}", c.etcd, c.etcd_process) for c in state.cells],
            path="/health",
            timeout=timeout,
            what="healthy",
        )
    kube = state.source == "kubernetes"
    if kube:
        with progress.step(f"Kubernetes API doubles ({len(state.cells)})"):
            try:
                kubeup.start_doubles(state, logs=logs, timeout=timeout)
            finally:
                save_state(state)
            kubeup.write_kubeconfigs(state)
        with progress.step("Kubernetes objects (nodes, services, endpoint slices)"):
            kubeup.seed(state)
    with progress.step(f"meshapi ({len(state.cells)})"):
        for cell in state.cells:
            argv = meshapi_argv(meshapi_bin, cell)
            cell.meshapi_process = _start(argv, logs / f"{cell.name}-meshapi.log")
        save_state(state)
        procs.wait_serving(
            [_target(f"meshapi of {c.name}", c.meshapi_http, c.meshapi_process)
             for c in state.cells],
            path="/healthz",
            timeout=timeout,
            what="serving",
        )  # fmt: skip
    with progress.step(f"node agents ({len(nodes)})"):
        for cell, node in nodes:
            if not kube:  # with kube, the endpoints are the EndpointSlices
                pods.write_workloads(node)
            node.agent = _start(
                agent_argv(agent_bin, cell, node, kube=kube),
                logs / _agent_log(cell, node),
                env={"NODE_NAME": node.name} if kube else None,
            )
        save_state(state)
        procs.wait_serving(
            [_target(f"agent {c.name}/{n.name}", n.http, n.agent) for c, n in nodes],
            path="/healthz",
            timeout=timeout,
            what="serving",
        )
    with progress.step(f"pods ({len(all_pods)} echo servers)"):
        for cell, node, pod in all_pods:
            pods.start_pod(cell.name, node, pod, logs=logs)
        save_state(state)
        pods.wait_ready([pod for _, _, pod in all_pods], timeout=timeout)
    with progress.step(f"contexts ({', '.join(c.context for c in state.cells)})"):
        for cell in state.cells:
            try:
                add_context(
                    Path(state.config_path),
                    Context(cell.context, cell.meshapi, Path(cell.admin_tls)),
                )
            except ContextError as e:
                raise RuntimeError(str(e)) from e
        if kube:
            kubeup.link_admin(state)
    if wait:
        with progress.step("every meshapi and agent ready"):
            targets = [
                _target(f"meshapi of {c.name}", c.meshapi_http, c.meshapi_process)
                for c in state.cells
            ] + [_target(f"agent {c.name}/{n.name}", n.http, n.agent) for c, n in nodes]
            procs.wait_serving(targets, path="/readyz", timeout=timeout, what="ready")
    state.phase = "up"
    save_state(state)


def _agent_log(cell: CellState, node: NodeState) -> str:
    return f"{cell.name}-{node.name}-agent.log"


def _start(argv: list[str], log: Path, *, env: dict[str, str] | None = None) -> ProcessState:
    pid, starttime = procs.spawn(argv, log=log, env=env)
    return ProcessState(argv=argv, log=str(log), env=env or {}, pid=pid, starttime=starttime)


def _check(process: ProcessState | None) -> procs.ProcessCheck:
    return lambda: process is not None and procs.alive(process.pid, process.starttime)


def _target(label: str, address: str, process: ProcessState | None) -> procs.ServeTarget:
    log = Path(process.log) if process is not None else None
    return procs.ServeTarget(label, address, _check(process), log)


def _issue_certificates(state: LabState) -> None:
    ca_dir = Path(state.ca_dir)
    try:
        # Backdated a little: a host whose clock lags by seconds still accepts the leaves.
        create_ca(
            trust_domain=f"{state.name}.{TRUST_DOMAIN_SUFFIX}",
            out_dir=ca_dir,
            now=datetime.now(UTC) - timedelta(minutes=5),
        )
        for cell in state.cells:
            issue_certificate(
                ca_dir=ca_dir, cell=cell.name, role=Role.MESHAPI, out_dir=Path(cell.meshapi_tls)
            )
            issue_certificate(
                ca_dir=ca_dir, cell=cell.name, role=Role.ADMIN, out_dir=Path(cell.admin_tls)
            )
            for node in cell.nodes:
                issue_certificate(
                    ca_dir=ca_dir,
                    cell=cell.name,
                    role=Role.AGENT,
                    node=node.name,
                    out_dir=Path(node.tls_dir),
                )
    except CertError as e:
        raise RuntimeError(str(e)) from e
