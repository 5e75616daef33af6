"""The command lines of the lab's daemons: etcd, meshapi and nodeagent, per source.

Pure: from the lab's state to argv lists (``up`` starts them; the state records them, so ``lab
start`` runs the very same again). With ``--source kubernetes`` meshapi watches the cell's API
double and the agents run as a DaemonSet runs them (node name from ``NODE_NAME``, which the
lab puts in the agent's recorded environment; no node or workload flags).
"""

from __future__ import annotations

from pathlib import Path

from meshctl.lab.kubeseed import MESHAPI_NAMESPACE
from meshctl.lab.state import CellState, NodeState

__all__ = ["HEARTBEAT_INTERVAL", "HEARTBEAT_TIMEOUT", "agent_argv", "etcd_argv", "meshapi_argv"]

HEARTBEAT_INTERVAL = "1"  # meshapi: seconds between heartbeats
HEARTBEAT_TIMEOUT = "10"  # nodeagent: a peer silent this long is stale


def etcd_argv(cell: CellState, directory: Path) -> list[str]:
    url = f"http://{cell.etcd}"
    peer = f"http://{cell.etcd_peer}"
    return [
        "etcd", "--name", cell.name, "--data-dir", str(directory / "etcd" / cell.name),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{cell.name}={peer}", "--initial-cluster-state", "new",
        "--log-level", "warn",
    ]  # fmt: skip


def meshapi_argv(meshapi_bin: str, cell: CellState) -> list[str]:
    argv = [
        meshapi_bin, "--cell", cell.name, "--cell-id", str(cell.id),
        "--pod-cidr", cell.pod_cidr, "--node-cidr", cell.node_cidr,
        "--etcd", f"http://{cell.etcd}", "--listen", cell.meshapi,
        "--tls-dir", cell.meshapi_tls, "--http", cell.meshapi_http,
        "--heartbeat-interval", HEARTBEAT_INTERVAL,
    ]  # fmt: skip
    if cell.kubeconfig is not None:  # the lab's source is kubernetes
        argv += ["--source", "kubernetes", "--kubeconfig", cell.kubeconfig,
                 "--kube-namespace", MESHAPI_NAMESPACE]  # fmt: skip
    return argv


def agent_argv(
    agent_bin: str, cell: CellState, node: NodeState, *, kube: bool = False
) -> list[str]:
    """The agent's command line; with ``kube`` as a DaemonSet runs it (NODE_NAME in its env)."""
    argv = [
        agent_bin, "--cell", cell.name, "--meshapi", cell.meshapi,
        "--tls-dir", node.tls_dir, "--cgroup", node.cgroup, "--pin-dir", node.pin_dir,
        "--http", node.http, "--netns", node.netns, "--heartbeat-timeout", HEARTBEAT_TIMEOUT,
    ]  # fmt: skip
    if kube:
        return [*argv, "--node-name-from-env", "NODE_NAME", "--registration", "kubernetes"]
    return [
        *argv, "--node", node.name, "--node-address", node.address, "--pod-cidr", node.pod_cidr,
        "--workloads", node.workloads,
    ]  # fmt: skip
