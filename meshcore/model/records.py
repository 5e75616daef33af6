"""The state records: what a cell publishes in its etcd and serves to its own and peer agents.

FROZEN WIRE CONTRACT: field names (and the ``global`` alias) are read by agents of other
versions. Add optional fields only; never rename, retype or remove one. ``extra="ignore"`` lets an
older reader keep a record that a newer writer extended.

Records are immutable pydantic models, validated on construction and on decode
(``codec.decode_record``); each knows its key (``record.key()``, see ``keys``). Checks that need
another record -- an identity's cell bits against the cell id, addresses against the cell's CIDRs
-- live in ``ownership``. Flow: sources build records -> codec encodes -> etcd -> codec decodes
and validates against the key -> watch caches -> merge.
"""

from __future__ import annotations

from enum import StrEnum
from ipaddress import IPv6Address
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from meshcore.model.agentstatus import AgentStatus
from meshcore.model.errors import RecordError
from meshcore.model.keys import (
    Kind,
    cell_key,
    endpoint_key,
    heartbeat_key,
    identity_key,
    ip_identity_key,
    node_key,
    peer_key,
    service_key,
    synced_key,
)
from meshcore.model.names import (
    MAX_CELL_ID,
    CellIdField,
    CellName,
    DnsLabel,
    DnsSubdomain,
    IpAddress,
    IpNetwork,
    Port,
    PortName,
    Protocol,
    Timestamp,
    check_dns_subdomain,
    shown,
)

__all__ = [
    "IDENTITY_CELL_SHIFT",
    "MAX_IDENTITY_ID",
    "MAX_LOCAL_IDENTITY",
    "RECORD_TYPES",
    "Affinity",
    "CellConfig",
    "Endpoint",
    "EndpointPort",
    "Frontend",
    "Heartbeat",
    "Identity",
    "IpIdentity",
    "Node",
    "Peer",
    "Record",
    "Service",
    "SyncCanary",
    "check_identity_cell",
    "identity_cell_id",
    "make_identity_id",
]

IDENTITY_CELL_SHIFT: Final = 16
MAX_LOCAL_IDENTITY: Final = (1 << IDENTITY_CELL_SHIFT) - 1
MAX_IDENTITY_ID: Final = (1 << 24) - 1

IdentityId = Annotated[int, Field(ge=1, le=MAX_IDENTITY_ID)]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class CellConfig(_Record):
    """A cell's identity card: peers verify it before trusting anything else the cell serves."""

    name: CellName
    id: CellIdField
    pod_cidrs: list[IpNetwork] = Field(min_length=1)
    node_cidrs: list[IpNetwork] = []
    capabilities: list[Annotated[str, Field(min_length=1, max_length=64)]] = []

    @property
    def cell(self) -> str:
        """The owning cell, like every other record's ``cell`` field."""
        return self.name

    def key(self) -> str:
        return cell_key(self.name)


class Heartbeat(_Record):
    """Written periodically by a cell's meshapi; its age tells how stale the cell's view is."""

    cell: CellName
    timestamp: Timestamp
    sequence: int = Field(ge=0)

    def key(self) -> str:
        return heartbeat_key(self.cell)


def _check_peer_address(value: str) -> str:
    """``host:port``: a DNS name, IPv4 address or ``[IPv6]``, and a port 1-65535."""
    host, colon, port = value.rpartition(":")
    if not colon or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{shown(value)} is not 'host:port' with a port 1-65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{shown(value)}: {shown(host)} is not an IPv6 address") from None
    else:
        try:
            check_dns_subdomain(host.lower())
        except ValueError:
            raise ValueError(
                f"{shown(value)}: {shown(host)} is not a host name or IPv4 address "
                "(write IPv6 as '[addr]:port')"
            ) from None
    return value


def _check_node_ref(value: str) -> str:
    return value if value == "" else check_dns_subdomain(value)


PeerAddress = Annotated[str, Field(max_length=300), AfterValidator(_check_peer_address)]
ServerName = Annotated[str, AfterValidator(check_dns_subdomain)]
NodeRef = Annotated[str, AfterValidator(_check_node_ref)]
"""A node name, or empty when the source does not know the node."""


class Peer(_Record):
    """A cell that ``cell`` is connected to, and where its meshapi listens.

    Each direction is a flag (both true in a bidirectional connection, and in records written
    before they existed): ``watch`` -- the agents of ``cell`` watch the peer; ``export`` -- the
    peer's agents may read ``cell`` (meshapi admits them). A unicast connection A -> B is A's
    record for B with ``export`` false and B's record for A with ``watch`` false.
    """

    cell: CellName
    name: CellName
    id: CellIdField
    address: PeerAddress
    tls_server_name: ServerName | None = None
    watch: bool = True
    export: bool = True

    @model_validator(mode="after")
    def _check(self) -> Peer:
        if self.name == self.cell:
            raise ValueError(f"a cell cannot be its own peer ({self.cell!r})")
        if not (self.watch or self.export):
            raise ValueError(
                f"peer {self.name!r} of cell {self.cell!r} neither watched nor exported to"
            )
        return self

    def key(self) -> str:
        return peer_key(self.cell, self.name)


class Node(_Record):
    """A node of a cell: where its pods' traffic goes and which pod CIDRs route to it."""

    cell: CellName
    name: DnsSubdomain
    addresses: list[IpAddress] = Field(min_length=1)
    pod_cidrs: list[IpNetwork] = []

    def key(self) -> str:
        return node_key(self.cell, self.name)


class Frontend(_Record):
    """One VIP:port of a service (a service has one per cluster IP and port)."""

    name: PortName = ""
    vip: IpAddress
    port: Port
    protocol: Protocol = "TCP"


class Affinity(StrEnum):
    """Which backends a global service prefers; the others serve only when none is healthy."""

    LOCAL = "local"
    REMOTE = "remote"
    NONE = "none"


class Service(_Record):
    """A service of a cell: its frontends and its ClusterMesh flags (from annotations)."""

    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    cell: CellName
    namespace: DnsLabel
    name: DnsLabel
    frontends: list[Frontend]
    global_: bool = Field(alias="global")
    shared: bool
    affinity: Affinity
    warnings: list[str] = []

    @model_validator(mode="after")
    def _check(self) -> Service:
        seen: set[tuple[object, int, str]] = set()
        for frontend in self.frontends:
            ident = (frontend.vip, frontend.port, frontend.protocol)
            if ident in seen:
                raise ValueError(
                    f"duplicate frontend {frontend.vip}:{frontend.port}/{frontend.protocol}"
                )
            seen.add(ident)
        return self

    @property
    def exported(self) -> bool:
        """Whether other cells may use this cell's backends: global and shared."""
        return self.global_ and self.shared

    def key(self) -> str:
        return service_key(self.cell, self.namespace, self.name)


class EndpointPort(_Record):
    """A port a backend listens on; matched to a frontend by name."""

    name: PortName = ""
    port: Port
    protocol: Protocol = "TCP"


class Endpoint(_Record):
    """One backend address of a service: one record each, so one change costs one write."""

    cell: CellName
    namespace: DnsLabel
    service: DnsLabel
    address: IpAddress
    node: NodeRef = ""
    ports: list[EndpointPort] = Field(min_length=1)
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    updated_at: Timestamp = 0.0
    """Unix seconds when the source saw the change; agents measure propagation latency with it."""

    @model_validator(mode="after")
    def _check(self) -> Endpoint:
        seen: set[tuple[int, str]] = set()
        for port in self.ports:
            if (port.port, port.protocol) in seen:
                raise ValueError(f"duplicate port {port.port}/{port.protocol}")
            seen.add((port.port, port.protocol))
        return self

    def key(self) -> str:
        return endpoint_key(self.cell, self.namespace, self.service, self.address)


class Identity(_Record):
    """A numeric security identity and its labels; bits 16-23 of the id are the cell id."""

    cell: CellName
    id: IdentityId
    labels: dict[Annotated[str, Field(min_length=1)], str]

    def key(self) -> str:
        return identity_key(self.cell, self.id)


class IpIdentity(_Record):
    """Which security identity an IP address has (may be a reserved one, such as host)."""

    cell: CellName
    ip: IpAddress
    identity: IdentityId

    def key(self) -> str:
        return ip_identity_key(self.cell, self.ip)


class SyncCanary(_Record):
    """Written after every pending write of one kind has landed: that kind is fully listed."""

    cell: CellName
    kind: Kind
    timestamp: Timestamp

    @model_validator(mode="after")
    def _check(self) -> SyncCanary:
        if self.kind is Kind.SYNCED:
            raise ValueError("a sync canary cannot mark the 'synced' kind itself")
        return self

    def key(self) -> str:
        return synced_key(self.cell, self.kind)


Record = (
    CellConfig
    | Heartbeat
    | Peer
    | Node
    | Service
    | Endpoint
    | Identity
    | IpIdentity
    | SyncCanary
    | AgentStatus
)

RECORD_TYPES: Final[dict[Kind, type[Record]]] = {
    Kind.CELL: CellConfig,
    Kind.HEARTBEAT: Heartbeat,
    Kind.PEER: Peer,
    Kind.NODE: Node,
    Kind.SERVICE: Service,
    Kind.ENDPOINT: Endpoint,
    Kind.IDENTITY: Identity,
    Kind.IP_IDENTITY: IpIdentity,
    Kind.SYNCED: SyncCanary,
    Kind.AGENT: AgentStatus,
}


def make_identity_id(cell_id: int, local_id: int) -> int:
    """The mesh-wide identity of a cell-local one: ``cell_id << 16 | local_id`` (Cilium's)."""
    if not 1 <= cell_id <= MAX_CELL_ID:
        raise ValueError(f"cell id {cell_id!r} is out of range (1-{MAX_CELL_ID})")
    if not 1 <= local_id <= MAX_LOCAL_IDENTITY:
        raise ValueError(f"local identity {local_id!r} is out of range (1-{MAX_LOCAL_IDENTITY})")
    return (cell_id << IDENTITY_CELL_SHIFT) | local_id


def identity_cell_id(identity_id: int) -> int:
    """The cell id carried in bits 16-23 of ``identity_id`` (0 for reserved identities)."""
    return (identity_id >> IDENTITY_CELL_SHIFT) & 0xFF


def check_identity_cell(identity: Identity, cell_id: int) -> None:
    """``RecordError`` unless ``identity`` carries ``cell_id`` (its owner's id) in bits 16-23."""
    carried = identity_cell_id(identity.id)
    if carried != cell_id:
        raise RecordError(
            identity.key(),
            f"identity {identity.id} carries cell id {carried}, but cell {identity.cell!r} "
            f"has id {cell_id}",
        )
