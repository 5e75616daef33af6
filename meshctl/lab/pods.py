"""Pods of the lab: a namespace, an echo server in the node's cgroup, and workloads entries.

A node's workloads file (``nodeagent --workloads``) is rendered from the node's pods in the
state: one endpoint per (pod, service), with the pod's ports and readiness. It is written
atomically (temporary file + rename), so the agent, which re-reads it when its mtime changes,
never sees half a file. The echo server (``python -m e2e.echo``) prints ``ready`` into its log
once its sockets are bound; `wait_ready` waits for that line.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshctl.lab import netns, procs
from meshctl.lab.state import NodeState, PodState, ProcessState

__all__ = [
    "PodError",
    "create_pod",
    "echo_argv",
    "in_pod_argv",
    "remove_pod",
    "start_pod",
    "wait_ready",
    "workloads_document",
    "write_workloads",
]


class PodError(RuntimeError):
    """A pod did not come up; the message names it and the tail of its log."""


def workloads_document(node: NodeState) -> dict[str, Any]:
    endpoints = [
        {
            "namespace": namespace,
            "service": service,
            "address": pod.address,
            "ports": [port.model_dump() for port in pod.ports],
            "ready": pod.ready,
        }
        for pod in node.pods
        for namespace, service in pod.services
        if pod.ports
    ]
    return {"endpoints": endpoints}


def write_workloads(node: NodeState) -> None:
    path = Path(node.workloads)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(workloads_document(node), f, indent=1)  # JSON is YAML
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def in_pod_argv(node: NodeState, pod: PodState, argv: Sequence[str]) -> list[str]:
    """argv run in the pod's namespace and its node's cgroup (joined first, then exec)."""
    return [
        "sh", "-c", procs.CGROUP_JOIN, "sh", node.cgroup,
        "ip", "netns", "exec", pod.netns, *argv,
    ]  # fmt: skip


def echo_argv(cell: str, node: NodeState, pod: PodState) -> list[str]:
    ports = sorted({port.port for port in pod.ports})
    port_flags = [arg for port in ports for arg in ("--port", str(port))]
    return [
        "ip", "netns", "exec", pod.netns,
        sys.executable, "-m", "e2e.echo",
        "--cell", cell, "--node", node.name, "--pod", pod.name, *port_flags,
    ]  # fmt: skip


def create_pod(node: NodeState, pod: PodState) -> None:
    prefix = node.pod_cidr.rsplit("/", 1)[1]
    netns.add_pod(
        node_netns=node.netns,
        gateway=node.gateway,
        netns=pod.netns,
        veth=pod.veth,
        address=f"{pod.address}/{prefix}",
    )


def start_pod(cell: str, node: NodeState, pod: PodState, *, logs: Path) -> None:
    """Start the pod's echo server in the node's cgroup (only when it serves a port)."""
    if not pod.ports:
        return
    argv = echo_argv(cell, node, pod)
    log = logs / f"{cell}-{node.name}-{pod.name}.log"
    pid, starttime = procs.spawn(argv, log=log, cgroup=Path(node.cgroup), append=False)
    pod.process = ProcessState(
        argv=argv, log=str(log), cgroup=node.cgroup, pid=pid, starttime=starttime
    )


def wait_ready(pods: Sequence[PodState], *, timeout: float = 20.0) -> None:
    """Wait until every started pod's echo server has printed ``ready``."""
    deadline = time.monotonic() + timeout
    pending = [p for p in pods if p.process is not None]
    while pending:
        still: list[PodState] = []
        for pod in pending:
            assert pod.process is not None
            log = Path(pod.process.log)
            text = log.read_text(errors="replace") if log.exists() else ""
            if "ready" in text.split():
                continue
            if not procs.alive(pod.process.pid, pod.process.starttime):
                raise PodError(f"pod {pod.name}: echo server exited: {_tail(text)}")
            still.append(pod)
        pending = still
        if pending and time.monotonic() > deadline:
            names = ", ".join(p.name for p in pending)
            raise PodError(f"echo server not ready after {timeout:.0f}s in pod(s) {names}")
        if pending:
            time.sleep(0.05)


def remove_pod(node: NodeState, pod: PodState) -> None:
    """Stop the pod's processes (the recorded one and anything else in its namespace), then
    delete its veth and its namespace. Idempotent.

    The veth is deleted first, explicitly: a deleted namespace is torn down asynchronously, and
    until then its veth would stay on the node's bridge — with the MAC and address a pod
    re-created there gets at once (`netns.mac_for`), taking its frames.
    """
    found = [(pod.process.pid, pod.process.starttime)] if pod.process else []
    for pid in netns.netns_pids(pod.netns):
        starttime = procs.read_starttime(pid)
        if starttime is not None:
            found.append((pid, starttime))
    live = [(pid, st) for pid, st in found if pid is not None and st is not None]
    left = procs.terminate(live, timeout=5.0)
    if left:
        raise PodError(f"pod {pod.name}: processes {left} did not exit")
    netns.delete_link(node.netns, pod.veth)
    netns.delete_netns(pod.netns)


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"
