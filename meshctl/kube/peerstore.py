"""Read and write a Kubernetes cell's peering: its ConfigMap ``cellmesh/cellmesh-peers``.

Flow: ``meshctl connect|disconnect --kube-context`` -> ``read_peers`` (the cell's Peer records as
the cluster holds them: the truth in Kubernetes mode, meshapi's records follow it) -> the command
computes the records the cell must hold -> ``write_peers`` (server-side apply of the whole
ConfigMap under its own field manager, so an entry this manager stops applying is removed and
entries other managers wrote stay). The format is ``meshctl.kube.peers``'. Errors are
``KubeAccessError`` naming the kube context and the API's reason.
"""

from __future__ import annotations

from collections.abc import Mapping

from meshcore.model import Peer
from meshctl.kube.access import KubeAccessError, KubeCellContext
from meshctl.kube.client import KubeClient, KubeError
from meshctl.kube.peers import (
    PEERS_CONFIGMAP,
    PEERS_FIELD_MANAGER,
    PEERS_NAMESPACE,
    PeersConfigMapError,
    peers_configmap,
    peers_from_configmap,
)

__all__ = ["read_peers", "where", "write_peers"]


def _client(ctx: KubeCellContext) -> KubeClient:
    return KubeClient.from_context(ctx.kube_context, kubeconfig=ctx.kubeconfig)


def where(ctx: KubeCellContext) -> str:
    """Where the cell's Peer records live, for messages."""
    return f"ConfigMap {PEERS_NAMESPACE}/{PEERS_CONFIGMAP}, kube context {ctx.kube_context}"


def read_peers(ctx: KubeCellContext, cell: str) -> dict[str, Peer]:
    """The Peer records of ``cell`` in its cluster's ConfigMap (none when it does not exist)."""
    try:
        with _client(ctx) as kube:
            configmap = kube.get("v1", "ConfigMap", PEERS_CONFIGMAP, PEERS_NAMESPACE)
        return peers_from_configmap(cell, configmap)
    except (KubeError, PeersConfigMapError) as e:
        raise KubeAccessError(f"kube context {ctx.kube_context!r}: {e}") from e


def write_peers(ctx: KubeCellContext, cell: str, peers: Mapping[str, Peer]) -> None:
    """Make the cell's ConfigMap hold exactly ``peers`` (of this manager's entries)."""
    body = peers_configmap(PEERS_NAMESPACE, cell, peers.values())
    try:
        with _client(ctx) as kube:
            kube.apply(body, field_manager=PEERS_FIELD_MANAGER)
    except KubeError as e:
        raise KubeAccessError(f"cell {cell!r}: {e}") from e
