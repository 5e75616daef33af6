"""The agent in a Kubernetes cluster: its node's name and Node record come from the cluster.

`--registration kubernetes`: meshapi's Kubernetes source writes the cell's nodes and endpoints
from the Node and EndpointSlice objects (InternalIP, `spec.podCIDRs`), so the agent registers
nothing and writes only its `AgentStatus`. Flow: the own cell's watcher fills
`view.own.cache.nodes` like any record → `own_node_reason` (pure) reads it → `NodeRecordAgent.ready`
is not ready, and says why (`/readyz`, `/status`, the agent's report), until the node's own record
exists, and again after it was deleted. Routes follow node records in both modes (every other
node's pod CIDRs via its address, `AgentCore`), so a changed Node object changes them.

`node_name_from_env`: `--node-name-from-env VAR`, the DaemonSet's downward-API `spec.nodeName`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from meshcore.model import check_dns_subdomain, node_key
from nodeagent.agent import Agent
from nodeagent.cellcache import CellCache


class Registration(StrEnum):
    """Who writes the node's records (`--registration`)."""

    STANDALONE = "standalone"  # the agent: flags and the workloads file
    KUBERNETES = "kubernetes"  # meshapi's Kubernetes source, from the cluster's objects


class NodeNameError(ValueError):
    """The node name from the environment is missing or invalid; the message names the variable."""


def node_name_from_env(var: str, environ: Mapping[str, str]) -> str:
    """The node name held by environment variable ``var`` (set and a DNS-1123 subdomain)."""
    value = environ.get(var)
    if value is None:
        raise NodeNameError(
            f"environment variable {var} is not set (a DaemonSet sets it from the downward "
            "API: env[].valueFrom.fieldRef.fieldPath: spec.nodeName)"
        )
    try:
        return check_dns_subdomain(value)
    except ValueError as e:
        raise NodeNameError(f"environment variable {var}: {e}") from e


def own_node_reason(cache: CellCache, *, cell: str, node: str) -> str | None:
    """Why the agent cannot serve yet for lack of its own Node record; None once it is there."""
    if node in cache.nodes:
        return None
    return (
        f"no Node record {node_key(cell, node)} in the own cell yet (registration "
        f"kubernetes: meshapi's Kubernetes source writes it from the cluster's Node {node})"
    )


class NodeRecordAgent(Agent):
    """An `Agent` that is ready only while its own cell holds its Node record."""

    def ready(self) -> tuple[bool, str]:
        ready, reason = super().ready()
        if not ready:
            return ready, reason
        missing = own_node_reason(self.view.own.cache, cell=self.config.cell, node=self.config.node)
        return (False, missing) if missing is not None else (True, reason)
