"""``lab status``: the lab's state file checked against the host, as JSON or tables.

The JSON document is a stable interface (other tools drive the lab through it; documented in
docs/lab.md); fields are only ever added::

    {"schema": "cellmesh.lab/v1", "lab": NAME, "phase": "creating|up",
     "state_dir": DIR, "config": CONTEXTS_FILE, "healthy": BOOL,
     "underlay": {"netns": NS, "exists": BOOL},
     "cells": [{"name", "id", "pod_cidr", "node_cidr", "context", "context_present",
                "etcd":    {"endpoint", "pid", "alive", "state", "healthy", "log"},
                "meshapi": {"address", "http", "pid", "alive", "state", "ready", "log"},
                "nodes": [{"name", "netns", "netns_exists", "address", "pod_cidr", "gateway",
                           "cgroup", "pin_dir", "workloads",
                           "agent": {"http", "pid", "alive", "state", "ready", "log"},
                           "pods": [{"name", "address", "netns", "netns_exists", "pid",
                                     "alive", "state", "ready", "services": ["ns/name"],
                                     "ports": [{"name", "port", "protocol"}]}]}]}]}

Added with ``--source kubernetes``: top-level ``"source": "standalone|kubernetes"`` and
``"kubeconfig"`` (the lab's combined kubeconfig, null in standalone); per cell ``"kubeapi"``
(``{"address", "pid", "alive", "state", "healthy", "log", "kubeconfig"}``, null in standalone;
``healthy``: ``/version`` answered 200).

``alive``: the recorded pid runs with its recorded start time. ``state``: ``running``,
``stopped`` (by ``lab stop``; pid null), ``exited`` (the recorded pid is gone though nobody
stopped it: a crash) or ``not-started``. ``healthy`` (etcd), ``ready``
(meshapi, agent): ``/health`` resp. ``/readyz`` answered 200 on loopback just now. A pod's
``ready`` is the readiness its endpoints are registered with. ``healthy`` at the top: every
namespace exists, every process is alive, every etcd healthy and every meshapi and agent ready.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from meshctl.contexts import ContextError, load_config
from meshctl.lab import netns, procs
from meshctl.lab.state import CellState, LabState, ProcessState, state_dir
from meshctl.output import format_table

__all__ = ["SCHEMA", "status_document", "status_tables"]

SCHEMA = "cellmesh.lab/v1"


def _process(process: ProcessState | None) -> dict[str, Any]:
    if process is None:
        return {"pid": None, "alive": False, "state": "not-started", "log": None}
    alive = procs.alive(process.pid, process.starttime)
    if alive:
        state = "running"
    elif process.stopped:
        state = "stopped"
    else:
        state = "exited" if process.pid is not None else "not-started"
    return {"pid": process.pid, "alive": alive, "state": state, "log": process.log}


def status_document(state: LabState) -> dict[str, Any]:
    wanted = [(c.etcd, "/health") for c in state.cells]
    wanted += [(c.meshapi_http, "/readyz") for c in state.cells]
    wanted += [(n.http, "/readyz") for c in state.cells for n in c.nodes]
    wanted += [(c.kubeapi, "/version") for c in state.cells if c.kubeapi is not None]
    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(lambda t: procs.http_status(*t), wanted))
    probes = dict(zip(wanted, codes, strict=True))
    try:
        contexts = set(load_config(Path(state.config_path)).contexts)
    except ContextError:
        contexts = set()
    present = set(netns.list_netns())
    cells = []
    for cell in state.cells:
        nodes = []
        for node in cell.nodes:
            agent = _process(node.agent) | {
                "http": node.http,
                "ready": probes[(node.http, "/readyz")] == 200,
            }
            pods = [
                {
                    "name": pod.name,
                    "address": pod.address,
                    "netns": pod.netns,
                    "netns_exists": pod.netns in present,
                    **{k: v for k, v in _process(pod.process).items() if k != "log"},
                    "ready": pod.ready,
                    "services": [f"{ns}/{name}" for ns, name in pod.services],
                    "ports": [port.model_dump() for port in pod.ports],
                }
                for pod in node.pods
            ]
            nodes.append(
                {
                    "name": node.name,
                    "netns": node.netns,
                    "netns_exists": node.netns in present,
                    "address": node.address,
                    "pod_cidr": node.pod_cidr,
                    "gateway": node.gateway,
                    "cgroup": node.cgroup,
                    "pin_dir": node.pin_dir,
                    "workloads": node.workloads,
                    "agent": agent,
                    "pods": pods,
                }
            )
        cells.append(
            {
                "name": cell.name,
                "id": cell.id,
                "pod_cidr": cell.pod_cidr,
                "node_cidr": cell.node_cidr,
                "context": cell.context,
                "context_present": cell.context in contexts,
                "etcd": _process(cell.etcd_process)
                | {"endpoint": cell.etcd, "healthy": probes[(cell.etcd, "/health")] == 200},
                "meshapi": _process(cell.meshapi_process)
                | {
                    "address": cell.meshapi,
                    "http": cell.meshapi_http,
                    "ready": probes[(cell.meshapi_http, "/readyz")] == 200,
                },
                "kubeapi": _kubeapi(cell, probes),
                "nodes": nodes,
            }
        )
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "lab": state.name,
        "phase": state.phase,
        "state_dir": str(state_dir(state.name)),
        "config": state.config_path,
        "source": state.source,
        "kubeconfig": state.kubeconfig,
        "healthy": False,
        "underlay": {"netns": state.underlay, "exists": state.underlay in present},
        "cells": cells,
    }
    doc["healthy"] = _healthy(doc)
    return doc


def _kubeapi(cell: CellState, probes: dict[tuple[str, str], int]) -> dict[str, Any] | None:
    if cell.kubeapi is None:
        return None
    return _process(cell.kubeapi_process) | {
        "address": cell.kubeapi,
        "healthy": probes[(cell.kubeapi, "/version")] == 200,
        "kubeconfig": cell.kubeconfig,
    }


def _healthy(doc: dict[str, Any]) -> bool:
    checks: list[bool] = [doc["underlay"]["exists"]]
    for cell in doc["cells"]:
        checks += [cell["etcd"]["alive"], cell["etcd"]["healthy"]]
        if cell["kubeapi"] is not None:
            checks += [cell["kubeapi"]["alive"], cell["kubeapi"]["healthy"]]
        checks += [cell["meshapi"]["alive"], cell["meshapi"]["ready"]]
        for node in cell["nodes"]:
            checks += [node["netns_exists"], node["agent"]["alive"], node["agent"]["ready"]]
            for pod in node["pods"]:
                checks.append(pod["netns_exists"])
                checks.append(pod["alive"] or not pod["ports"])
    return all(checks)


def _mark(ok: bool) -> str:
    return "yes" if ok else "NO"


def _pid(block: dict[str, Any]) -> str:
    pid = "-" if block["pid"] is None else str(block["pid"])
    if block["state"] == "running" or (block["state"] == "not-started" and pid == "-"):
        return pid
    return f"{pid} ({block['state']})"


def status_tables(doc: dict[str, Any]) -> str:
    """Cells, nodes and pods as three aligned tables (the summary of ``up`` too)."""
    cells: list[tuple[str, ...]] = []
    nodes: list[tuple[str, ...]] = []
    pods: list[tuple[str, ...]] = []
    for cell in doc["cells"]:
        cells.append(
            (
                cell["name"], str(cell["id"]), cell["pod_cidr"],
                cell["context"] + ("" if cell["context_present"] else " (missing)"),
                cell["meshapi"]["address"], _pid(cell["meshapi"]),
                _mark(cell["meshapi"]["ready"]), _pid(cell["etcd"]),
                _mark(cell["etcd"]["healthy"]),
            )
        )  # fmt: skip
        for node in cell["nodes"]:
            agent = node["agent"]
            nodes.append(
                (
                    f"{cell['name']}/{node['name']}", node["netns"], node["address"],
                    node["pod_cidr"], agent["http"], _pid(agent), _mark(agent["ready"]),
                )
            )  # fmt: skip
            for pod in node["pods"]:
                pods.append(
                    (
                        f"{cell['name']}/{node['name']}/{pod['name']}", pod["address"],
                        pod["netns"], _pid(pod), ",".join(pod["services"]) or "-",
                        "yes" if pod["ready"] else "no",
                    )
                )  # fmt: skip
    kube = [c for c in doc["cells"] if c.get("kubeapi")]
    parts = [
        f"Lab {doc['lab']} ({doc['phase']}, {'healthy' if doc['healthy'] else 'NOT healthy'}); "
        f"underlay {doc['underlay']['netns']}; contexts in {doc['config']}",
    ]
    if kube:
        parts.append(
            f"Source kubernetes; kubeconfig {doc['kubeconfig']}; API doubles: "
            + ", ".join(
                f"{c['name']} {c['kubeapi']['address']} pid {_pid(c['kubeapi'])}"
                f"{'' if c['kubeapi']['healthy'] else ' (NOT serving)'}"
                for c in kube
            )
        )
    parts += [
        "",
        format_table(
            ("CELL", "ID", "POD-CIDR", "CONTEXT", "MESHAPI", "PID", "READY", "ETCD-PID", "ETCD-OK"),
            cells,
        ),
        "",
        format_table(("NODE", "NETNS", "ADDRESS", "POD-CIDR", "AGENT-HTTP", "PID", "READY"), nodes),
    ]
    if pods:
        parts += ["", format_table(("POD", "ADDRESS", "NETNS", "PID", "SERVICES", "READY"), pods)]
    return "\n".join(parts)
