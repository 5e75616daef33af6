"""`LabDriver`: the connectivity suite's `e2e.driver.MeshDriver` over a running lab.

The CLI builds it and hands it to the suite; ``meshapi(cell)`` resolves the cell's meshctl
context (recorded in the lab's state) into an address and a TLS directory, so the suite never
reads the contexts file itself.

It works on the lab's state file (under its lock): a pod is added to the state before its
namespace and echo server are made, and dropped from it only after they are gone, so
``meshctl lab down`` removes whatever the driver added, even after a crash. Endpoints are
registered through the node's workloads file, which the node's agent re-reads when it changes.
Control-plane stops and restarts are ``control``'s (the argv recorded at ``up``: same flags,
same ports), as ``meshctl lab stop|start`` does them.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from ipaddress import IPv4Network
from pathlib import Path

from e2e.driver import AccessError, ExecResult, MeshApiAccess, Pod, PodSpec
from meshctl.contexts import ContextError, resolve_context
from meshctl.lab import pods, procs
from meshctl.lab.control import start_process, stop_process
from meshctl.lab.state import (
    LabState,
    NodeState,
    PodState,
    PortState,
    ProcessState,
    StateError,
    load_state,
    locked,
    save_state,
    state_dir,
)
from meshctl.lab.topology import check_pod_name, next_pod_host, pod_netns, pod_veth

__all__ = ["LabDriver", "exec_argv", "find_pod"]

START_TIMEOUT = 30.0
EXEC_TIMEOUT_CODE = 124  # as timeout(1)


def find_pod(state: LabState, cell: str, node: str, name: str) -> tuple[NodeState, PodState]:
    found = state.node(cell, node)
    for pod in found.pods:
        if pod.name == name:
            return found, pod
    raise StateError(f"no pod {cell}/{node}/{name} in lab {state.name!r}")


def exec_argv(state: LabState, cell: str, node: str, pod: str, argv: Sequence[str]) -> list[str]:
    found_node, found_pod = find_pod(state, cell, node, pod)
    return pods.in_pod_argv(found_node, found_pod, argv)


class LabDriver:
    """Drive lab ``name``, whose contexts live in the contexts file ``config_path``."""

    def __init__(self, name: str, config_path: Path) -> None:
        self.name = name
        self._config_path = Path(config_path)
        load_state(name)  # fail early, naming the lab, when it does not exist

    # --- what the lab is made of --------------------------------------------------------------

    def state(self) -> LabState:
        return load_state(self.name)

    def cells(self) -> list[str]:
        return [cell.name for cell in self.state().cells]

    def nodes(self, cell: str) -> list[str]:
        return [node.name for node in self.state().cell(cell).nodes]

    def context(self, cell: str) -> str:
        return self.state().cell(cell).context

    def config_path(self) -> str:
        return str(self._config_path)

    def meshapi(self, cell: str) -> MeshApiAccess:
        """The cell's context, resolved from the contexts file now (it may have changed)."""
        try:
            ctx = resolve_context(self._config_path, self.context(cell))
        except ContextError as e:
            raise AccessError(str(e)) from e
        return MeshApiAccess(ctx.server, ctx.tls_dir, ctx.server_name)

    def python(self) -> str:
        return sys.executable

    # --- pods ---------------------------------------------------------------------------------

    def add_pod(self, spec: PodSpec) -> Pod:
        check_pod_name(spec.name)
        with locked(self.name):
            state = self.state()
            cell = state.cell(spec.cell)
            node = state.node(spec.cell, spec.node)
            if any(p.name == spec.name for p in node.pods):
                raise StateError(f"pod {spec.cell}/{spec.node}/{spec.name} already exists")
            host = next_pod_host({p.host for p in node.pods})
            pod = PodState(
                name=spec.name,
                host=host,
                address=_pod_address(node, host),
                netns=pod_netns(node.netns, host),
                veth=pod_veth(host),
                services=[(ns, svc) for ns, svc in spec.services],
                ports=[
                    PortState(name=p.name, port=p.port, protocol=p.protocol) for p in spec.ports
                ],
                ready=spec.ready,
            )
            node.pods.append(pod)
            save_state(state)  # recorded before it exists
            try:
                pods.create_pod(node, pod)
                pods.start_pod(cell.name, node, pod, logs=state_dir(self.name) / "logs")
                save_state(state)
                pods.wait_ready([pod])
            except BaseException:
                pods.remove_pod(node, pod)
                node.pods.remove(pod)
                save_state(state)
                raise
            pods.write_workloads(node)
        return Pod(cell=spec.cell, node=spec.node, name=spec.name, address=pod.address)

    def set_ready(self, cell: str, node: str, name: str, ready: bool) -> None:
        with locked(self.name):
            state = self.state()
            found_node, pod = find_pod(state, cell, node, name)
            pod.ready = ready
            save_state(state)
            pods.write_workloads(found_node)

    def delete_pod(self, cell: str, node: str, name: str) -> None:
        with locked(self.name):
            state = self.state()
            try:
                found_node, pod = find_pod(state, cell, node, name)
            except StateError:
                return
            # Deregister first, then stop and remove; forget it only once it is gone.
            remaining = found_node.model_copy(
                update={"pods": [p for p in found_node.pods if p is not pod]}
            )
            pods.write_workloads(remaining)
            pods.remove_pod(found_node, pod)
            found_node.pods.remove(pod)
            save_state(state)

    def exec(
        self, cell: str, node: str, pod: str, argv: Sequence[str], *, timeout: float = 30.0
    ) -> ExecResult:
        full = exec_argv(self.state(), cell, node, pod, argv)
        try:
            done = subprocess.run(
                full, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as e:
            return ExecResult(
                EXEC_TIMEOUT_CODE,
                _text(e.stdout),
                _text(e.stderr) + f"\ntimed out after {timeout:g}s\n",
            )
        return ExecResult(done.returncode, done.stdout, done.stderr)

    # --- control plane ------------------------------------------------------------------------

    def stop_meshapi(self, cell: str) -> None:
        with locked(self.name):
            state = self.state()
            what = f"meshapi of {cell}"
            stop_process(_recorded(state.cell(cell).meshapi_process, what), what)
            save_state(state)

    def start_meshapi(self, cell: str) -> None:
        with locked(self.name):
            state = self.state()
            found = state.cell(cell)
            process = _recorded(found.meshapi_process, f"meshapi of {cell}")
            start_process(process)
            save_state(state)
        procs.wait_serving(
            [procs.ServeTarget(f"meshapi of {cell}", found.meshapi_http, _check(process),
                               Path(process.log))],
            path="/readyz",
            timeout=START_TIMEOUT,
            what="ready",
        )  # fmt: skip

    def restart_agent(self, cell: str, node: str) -> None:
        with locked(self.name):
            state = self.state()
            found = state.node(cell, node)
            process = _recorded(found.agent, f"agent {cell}/{node}")
            stop_process(process, f"agent {cell}/{node}")
            start_process(process)
            save_state(state)
        procs.wait_serving(
            [procs.ServeTarget(f"agent {cell}/{node}", found.http, _check(process),
                               Path(process.log))],
            path="/healthz",
            timeout=START_TIMEOUT,
            what="serving",
        )  # fmt: skip


def _pod_address(node: NodeState, host: int) -> str:
    return str(IPv4Network(node.pod_cidr).network_address + host)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def _check(process: ProcessState) -> procs.ProcessCheck:
    return lambda: procs.alive(process.pid, process.starttime)


def _recorded(process: ProcessState | None, what: str) -> ProcessState:
    if process is None:
        raise StateError(f"{what} was never started")
    return process
