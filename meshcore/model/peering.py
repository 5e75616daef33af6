"""The peering ConfigMap of a Kubernetes cell: one format for its writer and its reader.

In Kubernetes mode the cell's etcd is a cache (wiped with its pod), so which cells it is
connected to lives in the cluster: ConfigMap ``cellmesh-peers`` in meshapi's namespace, whose
``data`` maps each peer cell's name to a JSON object with the Peer record's fields except
``cell`` and ``name``::

    data: {"cell-2": '{"address": "10.0.0.5:7443", "export": true, "id": 2,
                       "tls_server_name": null, "watch": true}'}

``meshctl connect|disconnect --kube-context`` writes it (``peers_configmap``); meshapi's
Kubernetes source reads it (``parse_peer_entries``) into Peer records. Pure: no IO.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from pydantic import ValidationError

from meshcore.model.codec import loc_path
from meshcore.model.records import Peer

__all__ = [
    "PEERS_CONFIGMAP",
    "PEER_ENTRY_FIELDS",
    "PeerEntryError",
    "parse_peer_entries",
    "peers_configmap",
]

PEERS_CONFIGMAP: Final = "cellmesh-peers"
PEER_ENTRY_FIELDS: Final = ("id", "address", "tls_server_name", "watch", "export")


class PeerEntryError(ValueError):
    """An entry of the ConfigMap's data is not a Peer: ``field`` (``data[NAME].FIELD``) and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def peers_configmap(namespace: str, cell: str, peers: Iterable[Peer]) -> dict[str, Any]:
    """The ConfigMap (the API's JSON form) that makes ``peers`` the peers of cell ``cell``."""
    data: dict[str, str] = {}
    for peer in peers:
        if peer.cell != cell:
            raise ValueError(f"peer {peer.name!r} is a peer of cell {peer.cell!r}, not {cell!r}")
        body = peer.model_dump(mode="json", include=set(PEER_ENTRY_FIELDS))
        data[peer.name] = json.dumps(body, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": PEERS_CONFIGMAP,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "cellmesh", "cellmesh.io/cell": cell},
        },
        "data": dict(sorted(data.items())),
    }


def parse_peer_entries(cell: str, data: Mapping[str, object]) -> list[Peer]:
    """The Peer records of cell ``cell`` in the ConfigMap's ``data``, by peer name; the first
    bad entry raises ``PeerEntryError`` (one bad entry makes the whole ConfigMap bad)."""
    peers: list[Peer] = []
    for name, text in sorted(data.items()):
        field = f"data[{name!r}]"
        if not isinstance(text, str):
            raise PeerEntryError(field, f"expected a string, got {type(text).__name__}")
        try:
            body = json.loads(text)
        except json.JSONDecodeError as e:
            raise PeerEntryError(field, f"not JSON: {e}") from None
        if not isinstance(body, dict):
            raise PeerEntryError(field, "expected a JSON object")
        unknown = sorted(set(body) - set(PEER_ENTRY_FIELDS))
        if unknown:
            raise PeerEntryError(
                field, f"unknown fields {unknown} (allowed: {list(PEER_ENTRY_FIELDS)})"
            )
        try:
            peers.append(Peer.model_validate({**body, "cell": cell, "name": name}))
        except ValidationError as e:
            first = e.errors(include_url=False, include_input=False)[0]
            where = loc_path(first["loc"])
            raise PeerEntryError(f"{field}.{where}" if where else field, first["msg"]) from None
    return peers
