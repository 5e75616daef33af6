"""The peering ConfigMap ``cellmesh/cellmesh-peers``: which cells a Kubernetes cell is connected to.

In Kubernetes mode the cell's etcd is a cache (an ``emptyDir`` wiped at pod start), so the
peering lives in the cluster: one ConfigMap whose ``data`` maps each peer cell's name to a JSON
object with the Peer record's fields except ``cell`` and ``name``::

    data: {"cell-2": '{"id": 2, "address": "10.0.0.5:7443", "tls_server_name": null,
                       "watch": true, "export": true}'}

The format is ``meshcore.model.peering``'s (meshapi's Kubernetes source reads it with the
same module); ``meshctl connect|disconnect --kube-context`` write it through here. Pure: no IO.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from meshcore.model import Peer
from meshcore.model.peering import (
    PEERS_CONFIGMAP,
    PeerEntryError,
    parse_peer_entries,
    peers_configmap,
)

__all__ = [
    "PEERS_CONFIGMAP",
    "PEERS_FIELD_MANAGER",
    "PEERS_NAMESPACE",
    "PeersConfigMapError",
    "peers_configmap",
    "peers_from_configmap",
]

PEERS_NAMESPACE: Final = "cellmesh"
# Its own field manager: server-side apply drops the entries a manager stops applying, so the
# peering must not share a manager with ``meshctl install`` (whose objects leave data out).
PEERS_FIELD_MANAGER: Final = "meshctl-connect"


class PeersConfigMapError(ValueError):
    """The ConfigMap holds an entry that is not a Peer; the message names the key and field."""


def peers_from_configmap(cell: str, configmap: Mapping[str, Any] | None) -> dict[str, Peer]:
    """The Peer records of ``cell`` in the ConfigMap (none when it does not exist), by name."""
    if configmap is None:
        return {}
    where = f"ConfigMap {PEERS_NAMESPACE}/{PEERS_CONFIGMAP}"
    data = configmap.get("data") or {}
    if not isinstance(data, Mapping):
        raise PeersConfigMapError(f"{where}: data is not a map")
    try:
        return {peer.name: peer for peer in parse_peer_entries(cell, data)}
    except PeerEntryError as e:
        raise PeersConfigMapError(f"{where}: {e}") from None
