"""Key paths of every state record in a cell's etcd.

FROZEN WIRE CONTRACT: agents of different versions read each other's keys; changing a layout
below means a new ``PREFIX`` (``cellmesh/v2/``), never an edit in place.

Every key is ``cellmesh/v1/<kind>/<cell>[/<more>...]``. Each meshapi owns its own etcd, but the
cell name is part of every key, so keys are globally unique and a reader can check a record's body
against its key (``codec.decode_record``). Segments are validated names or canonical IP
addresses and never contain ``/``, so a key splits unambiguously.

    cellmesh/v1/cells/<cell>                                      CellConfig
    cellmesh/v1/heartbeat/<cell>                                  Heartbeat
    cellmesh/v1/peers/<cell>/<peer-cell>                          Peer
    cellmesh/v1/nodes/<cell>/<node>                               Node
    cellmesh/v1/services/<cell>/<namespace>/<name>                Service
    cellmesh/v1/endpoints/<cell>/<namespace>/<service>/<address>  Endpoint (one per backend)
    cellmesh/v1/identities/<cell>/<id>                            Identity
    cellmesh/v1/ipidentities/<cell>/<ip>                          IpIdentity
    cellmesh/v1/synced/<cell>/<kind>                              SyncCanary
    cellmesh/v1/agents/<cell>/<node>                              AgentStatus (own cell only)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address, ip_address

from meshcore.model.errors import RecordError

__all__ = [
    "KEY_SEGMENTS",
    "PREFIX",
    "KeyParts",
    "Kind",
    "agent_key",
    "cell_key",
    "endpoint_key",
    "endpoint_service_key",
    "heartbeat_key",
    "identity_key",
    "ip_identity_key",
    "kind_of_key",
    "kind_prefix",
    "node_key",
    "parse_key",
    "peer_key",
    "service_endpoints_prefix",
    "service_key",
    "synced_key",
]

PREFIX = "cellmesh/v1/"


class Kind(StrEnum):
    """The record kinds; each value is the key segment after ``PREFIX``."""

    CELL = "cells"
    HEARTBEAT = "heartbeat"
    PEER = "peers"
    NODE = "nodes"
    SERVICE = "services"
    ENDPOINT = "endpoints"
    IDENTITY = "identities"
    IP_IDENTITY = "ipidentities"
    SYNCED = "synced"
    AGENT = "agents"


# The names of the segments after the kind, in key order (used in error messages).
KEY_SEGMENTS: dict[Kind, tuple[str, ...]] = {
    Kind.CELL: ("cell",),
    Kind.HEARTBEAT: ("cell",),
    Kind.PEER: ("cell", "peer"),
    Kind.NODE: ("cell", "node"),
    Kind.SERVICE: ("cell", "namespace", "name"),
    Kind.ENDPOINT: ("cell", "namespace", "service", "address"),
    Kind.IDENTITY: ("cell", "id"),
    Kind.IP_IDENTITY: ("cell", "ip"),
    Kind.SYNCED: ("cell", "kind"),
    Kind.AGENT: ("cell", "node"),
}

_KIND_BY_VALUE: dict[str, Kind] = {kind.value: kind for kind in Kind}
_ENDPOINTS = PREFIX + Kind.ENDPOINT.value + "/"
_SERVICES = PREFIX + Kind.SERVICE.value + "/"


@dataclass(frozen=True, slots=True)
class KeyParts:
    """A key split into its kind, owning cell and the segments after the cell."""

    kind: Kind
    cell: str
    rest: tuple[str, ...]


def kind_prefix(kind: Kind) -> str:
    """The prefix under which every record of ``kind`` lives (ends with ``/``)."""
    return PREFIX + Kind(kind).value + "/"


def kind_of_key(key: str) -> Kind:
    """The kind of the record at ``key``; ``RecordError`` when the key is not a cellmesh key."""
    if not key.startswith(PREFIX):
        raise RecordError(key, f"key does not start with {PREFIX!r}")
    kind_value, slash, rest = key[len(PREFIX) :].partition("/")
    kind = _KIND_BY_VALUE.get(kind_value)
    if kind is None:
        raise RecordError(key, f"unknown record kind {kind_value[:40]!r}")
    if not slash or not rest:
        raise RecordError(key, f"key names no {kind.value} record after the kind")
    return kind


def parse_key(key: str) -> KeyParts:
    """Split ``key`` into kind, cell and the remaining segments, checking their count.

    Useful for deletes, which carry only a key. Segment contents are not validated here; a record
    decoded from the key is (``codec.decode_record``).
    """
    kind = kind_of_key(key)
    segments = key[len(PREFIX) + len(kind.value) + 1 :].split("/")
    names = KEY_SEGMENTS[kind]
    if len(segments) != len(names):
        layout = "/".join(f"<{name}>" for name in names)
        raise RecordError(key, f"a {kind.value} key has the form {kind_prefix(kind)}{layout}")
    for name, segment in zip(names, segments, strict=True):
        if not segment:
            raise RecordError(key, f"empty {name} segment")
    return KeyParts(kind=kind, cell=segments[0], rest=tuple(segments[1:]))


def _join(kind: Kind, *segments: str) -> str:
    key = PREFIX + kind.value + "/" + "/".join(segments)
    for name, segment in zip(KEY_SEGMENTS[kind], segments, strict=True):
        if not segment or "/" in segment:
            raise RecordError(key, f"{name} {segment!r} cannot be a key segment")
    return key


def _ip_segment(value: str | IPv4Address | IPv6Address, kind: Kind) -> str:
    """The canonical text of an IP address, so that keys compare equal byte for byte."""
    if isinstance(value, IPv4Address | IPv6Address):
        return str(value)
    try:
        return str(ip_address(value))
    except ValueError:
        raise RecordError(
            PREFIX + kind.value + "/", f"{value[:64]!r} is not an IP address"
        ) from None


def cell_key(cell: str) -> str:
    """``cellmesh/v1/cells/<cell>``: the cell's ``CellConfig``."""
    return _join(Kind.CELL, cell)


def heartbeat_key(cell: str) -> str:
    """``cellmesh/v1/heartbeat/<cell>``: the cell's ``Heartbeat``."""
    return _join(Kind.HEARTBEAT, cell)


def peer_key(cell: str, peer: str) -> str:
    """``cellmesh/v1/peers/<cell>/<peer-cell>``: a cell that ``cell`` is connected to."""
    return _join(Kind.PEER, cell, peer)


def node_key(cell: str, node: str) -> str:
    """``cellmesh/v1/nodes/<cell>/<node>``."""
    return _join(Kind.NODE, cell, node)


def service_key(cell: str, namespace: str, name: str) -> str:
    """``cellmesh/v1/services/<cell>/<namespace>/<name>``."""
    return _join(Kind.SERVICE, cell, namespace, name)


def endpoint_key(
    cell: str, namespace: str, service: str, address: str | IPv4Address | IPv6Address
) -> str:
    """``cellmesh/v1/endpoints/<cell>/<namespace>/<service>/<address>`` (address canonical)."""
    return _join(Kind.ENDPOINT, cell, namespace, service, _ip_segment(address, Kind.ENDPOINT))


def service_endpoints_prefix(cell: str, namespace: str, service: str) -> str:
    """The prefix of every endpoint key of one service (ends with ``/``)."""
    return _ENDPOINTS + service_key(cell, namespace, service)[len(_SERVICES) :] + "/"


def identity_key(cell: str, identity_id: int) -> str:
    """``cellmesh/v1/identities/<cell>/<id>`` with the id in decimal."""
    return _join(Kind.IDENTITY, cell, str(int(identity_id)))


def ip_identity_key(cell: str, ip: str | IPv4Address | IPv6Address) -> str:
    """``cellmesh/v1/ipidentities/<cell>/<ip>`` (ip canonical)."""
    return _join(Kind.IP_IDENTITY, cell, _ip_segment(ip, Kind.IP_IDENTITY))


def synced_key(cell: str, kind: Kind) -> str:
    """``cellmesh/v1/synced/<cell>/<kind>``: the sync canary of one kind of a cell."""
    return _join(Kind.SYNCED, cell, Kind(kind).value)


def agent_key(cell: str, node: str) -> str:
    """``cellmesh/v1/agents/<cell>/<node>``: what the node's agent last reported about itself."""
    return _join(Kind.AGENT, cell, node)


def endpoint_service_key(endpoint_key: str) -> str:
    """The key of the service that the endpoint at ``endpoint_key`` belongs to.

    Pure string work, no parsing of segment contents: ``endpoints/<c>/<ns>/<svc>/<addr>`` becomes
    ``services/<c>/<ns>/<svc>``. ``RecordError`` when ``endpoint_key`` is not an endpoint key.
    """
    if not endpoint_key.startswith(_ENDPOINTS):
        raise RecordError(endpoint_key, f"not an endpoint key (expected prefix {_ENDPOINTS!r})")
    owner, slash, address = endpoint_key[len(_ENDPOINTS) :].rpartition("/")
    if not slash or not address or owner.count("/") != 2 or "" in owner.split("/"):
        raise RecordError(
            endpoint_key,
            f"an endpoint key has the form {_ENDPOINTS}<cell>/<namespace>/<service>/<address>",
        )
    return _SERVICES + owner
