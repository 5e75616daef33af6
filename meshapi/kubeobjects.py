"""Kubernetes objects (the API's own JSON, as dicts) -> cellmesh records; pure, no IO.

The Kubernetes source (`meshapi.kubesource`) feeds every object it lists or watches through
here and writes what comes out. Services reuse `service_from_manifest`; a Namespace annotated
``clustermesh.cilium.io/global: "true"`` makes its Services global by default (a Service's own
annotation, new or legacy key, wins). EndpointSlices (``discovery.k8s.io/v1``, IPv4 only) are
parsed one by one and merged per Service into ONE Endpoint record per backend address (the union
of its ports over every slice). Nodes give their InternalIPs and pod CIDRs; the ConfigMap
``cellmesh-peers`` gives the cell's Peer records. Every record is checked against the cell's
config (`ownership.check_record_owner`); anything wrong raises `KubeObjectError` naming the
kind, ``namespace/name`` and the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any, Final

from pydantic import ValidationError

from meshcore.model import (
    CellConfig,
    Endpoint,
    EndpointPort,
    ManifestError,
    Node,
    Peer,
    RecordError,
    Service,
    service_from_manifest,
)
from meshcore.model.codec import loc_path
from meshcore.model.names import (
    check_dns_label,
    check_dns_subdomain,
    check_port,
    check_port_name,
    parse_ip_address,
    shown,
)
from meshcore.model.ownership import check_record_owner
from meshcore.model.peering import (
    PEERS_CONFIGMAP,
    PeerEntryError,
    parse_peer_entries,
    peers_configmap,
)

__all__ = [
    "NAMESPACE_GLOBAL",
    "PEERS_CONFIGMAP",
    "SERVICE_NAME_LABEL",
    "KubeObjectError",
    "ParsedSlice",
    "SliceEndpoint",
    "SlicePort",
    "endpoints_from_slices",
    "namespace_is_global",
    "node_record",
    "object_ref",
    "parse_endpoint_slice",
    "peers_configmap",
    "peers_from_configmap",
    "service_record",
]

NAMESPACE_GLOBAL: Final = "clustermesh.cilium.io/global"
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


class KubeObjectError(ValueError):
    """A Kubernetes object cellmesh cannot use: ``<Kind> <namespace/name>: <field>: <reason>``."""

    def __init__(self, kind: str, ref: str, field: str, reason: str) -> None:
        super().__init__(kind, ref, field, reason)
        self.kind = kind
        self.ref = ref
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        where = f": {self.field}" if self.field else ""
        return f"{self.kind} {self.ref}{where}: {self.reason}"


def object_ref(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` (or ``name`` for a cluster-scoped object), for messages and keys."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return "<no metadata>"
    name, namespace = metadata.get("name"), metadata.get("namespace")
    name_text = name if isinstance(name, str) else shown(name)
    if namespace is None:
        return name_text
    return f"{namespace if isinstance(namespace, str) else shown(namespace)}/{name_text}"


class _Fields:
    """Typed access to one object's fields; every failure names the object and the field."""

    def __init__(self, kind: str, obj: Mapping[str, Any]) -> None:
        self.kind = kind
        self.ref = object_ref(obj)

    def error(self, field: str, reason: str) -> KubeObjectError:
        return KubeObjectError(self.kind, self.ref, field, reason)

    def mapping(self, value: object, field: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(field, f"expected an object, got {shown(value)}")
        return value

    def items(self, value: object, field: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(field, f"expected a list, got {shown(value)}")
        return value

    def string(self, value: object, field: str) -> str:
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {shown(value)}")
        return value

    def flag(self, value: object, field: str, default: bool) -> bool:
        """A boolean with the API's nil semantics: absent or null is ``default``."""
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(field, f"expected true, false or null, got {shown(value)}")
        return value

    def name(self, obj: Mapping[str, Any], *, namespaced: bool) -> tuple[str, str]:
        metadata = self.mapping(obj.get("metadata"), "metadata")
        name = self.string(metadata.get("name"), "metadata.name")
        namespace = ""
        if namespaced:
            namespace = self.string(metadata.get("namespace"), "metadata.namespace")
            self.check(check_dns_label, namespace, "metadata.namespace")
        return namespace, name

    def check(self, check: Any, value: object, field: str) -> Any:
        try:
            return check(value)
        except ValueError as e:
            raise self.error(field, str(e)) from None

    def owned(self, record: Service | Endpoint | Node, config: CellConfig, field: str) -> None:
        try:
            check_record_owner(record, config)
        except RecordError as e:
            raise self.error(field, e.reason) from None


# ---- Namespaces and Services ---------------------------------------------------------------


def namespace_is_global(obj: Mapping[str, Any]) -> bool:
    """Whether a Namespace makes its Services global by default (Cilium's namespace export)."""
    f = _Fields("Namespace", obj)
    metadata = f.mapping(obj.get("metadata"), "metadata")
    annotations = f.mapping(metadata.get("annotations"), "metadata.annotations")
    value = annotations.get(NAMESPACE_GLOBAL)
    return isinstance(value, str) and value.strip().lower() == "true"


def service_record(
    obj: Mapping[str, Any], *, config: CellConfig, namespace_global: bool = False
) -> Service:
    """The Service record of a ``v1/Service`` (headless: no frontends; IPv6 ClusterIPs kept)."""
    f = _Fields("Service", obj)
    f.name(obj, namespaced=True)
    try:
        # List items carry no kind/apiVersion (the list does): the caller says it is a Service.
        record = service_from_manifest(
            {**obj, "apiVersion": "v1", "kind": "Service"},
            cell=config.name,
            source="Service",
            default_global=namespace_global,
        )
    except ManifestError as e:
        raise f.error(e.path, e.reason) from None
    f.owned(record, config, "")
    return record


# ---- EndpointSlices ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlicePort:
    name: str
    port: int
    protocol: str


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """One address of a slice with its conditions resolved (the API's nil semantics)."""

    address: Address
    node: str
    ready: bool
    serving: bool
    terminating: bool


@dataclass(frozen=True, slots=True)
class ParsedSlice:
    """A valid IPv4 EndpointSlice: the service it belongs to, its ports and its addresses."""

    namespace: str
    service: str
    name: str
    ports: tuple[SlicePort, ...]
    endpoints: tuple[SliceEndpoint, ...]


def _slice_ports(f: _Fields, obj: Mapping[str, Any]) -> tuple[SlicePort, ...]:
    ports: list[SlicePort] = []
    seen: dict[tuple[int, str], int] = {}
    for i, entry in enumerate(f.items(obj.get("ports"), "ports")):
        path = f"ports[{i}]"
        item = f.mapping(entry, path)
        name = item.get("name") or ""
        f.check(check_port_name, f.string(name, f"{path}.name"), f"{path}.name")
        if item.get("port") is None:
            continue  # "all ports" (a selector-less service): nothing a frontend can map to
        port = f.check(check_port, item["port"], f"{path}.port")
        protocol = item.get("protocol") or "TCP"
        if protocol not in ("TCP", "UDP"):
            raise f.error(f"{path}.protocol", f"{shown(protocol)} is not supported (TCP or UDP)")
        if (port, protocol) in seen:
            raise f.error(
                path, f"duplicate port {port}/{protocol} (also ports[{seen[port, protocol]}])"
            )
        seen[port, protocol] = i
        ports.append(SlicePort(name, port, protocol))
    return tuple(ports)


def _slice_endpoint(
    f: _Fields, entry: object, path: str, config: CellConfig
) -> list[SliceEndpoint]:
    item = f.mapping(entry, path)
    conditions = f.mapping(item.get("conditions"), f"{path}.conditions")
    ready = f.flag(conditions.get("ready"), f"{path}.conditions.ready", True)
    serving = f.flag(conditions.get("serving"), f"{path}.conditions.serving", ready)
    terminating = f.flag(conditions.get("terminating"), f"{path}.conditions.terminating", False)
    node = item.get("nodeName") or ""
    if node:
        f.check(check_dns_subdomain, f.string(node, f"{path}.nodeName"), f"{path}.nodeName")
    out: list[SliceEndpoint] = []
    owned = [*config.pod_cidrs, *config.node_cidrs]
    for j, text in enumerate(f.items(item.get("addresses"), f"{path}.addresses")):
        field = f"{path}.addresses[{j}]"
        address = f.check(parse_ip_address, f.string(text, field), field)
        if address.version != 4:
            raise f.error(field, f"{address} is not IPv4 (addressType is IPv4)")
        if not any(address.version == c.version and address in c for c in owned):
            raise f.error(field, f"endpoint address {address} is outside the cell's CIDRs")
        out.append(SliceEndpoint(address, node, ready, serving, terminating))
    return out


def parse_endpoint_slice(obj: Mapping[str, Any], *, config: CellConfig) -> ParsedSlice | None:
    """A ``discovery.k8s.io/v1`` EndpointSlice, or None when cellmesh does not use it (not IPv4,
    or no ``kubernetes.io/service-name`` label: not a Service's slice)."""
    f = _Fields("EndpointSlice", obj)
    namespace, name = f.name(obj, namespaced=True)
    address_type = obj.get("addressType")
    if address_type != "IPv4":
        if not isinstance(address_type, str):
            raise f.error("addressType", f"expected a string, got {shown(address_type)}")
        return None
    metadata = f.mapping(obj.get("metadata"), "metadata")
    labels = f.mapping(metadata.get("labels"), "metadata.labels")
    service = labels.get(SERVICE_NAME_LABEL)
    if service is None:
        return None
    field = f"metadata.labels[{SERVICE_NAME_LABEL!r}]"
    f.check(check_dns_label, f.string(service, field), field)
    ports = _slice_ports(f, obj)
    endpoints: list[SliceEndpoint] = []
    seen: dict[Address, str] = {}
    for i, entry in enumerate(f.items(obj.get("endpoints"), "endpoints")):
        for ep in _slice_endpoint(f, entry, f"endpoints[{i}]", config):
            if ep.address in seen:
                raise f.error(f"endpoints[{i}]", f"address {ep.address} also in {seen[ep.address]}")
            seen[ep.address] = f"endpoints[{i}]"
            endpoints.append(ep)
    return ParsedSlice(namespace, service, name, ports, tuple(endpoints))


def endpoints_from_slices(slices: Iterable[ParsedSlice], *, cell: str) -> dict[str, Endpoint]:
    """The Endpoint records (by key) of one Service's slices: one per address, with the union
    of its ports over every slice holding it. An address listed twice takes the conditions of
    the slice first in name order (the API never does this in a steady state). Addresses of
    slices without ports have no record (a backend needs a port). ``updated_at`` is left 0:
    the caller stamps a record when it changes."""
    merged: dict[Address, tuple[SliceEndpoint, dict[tuple[int, str], SlicePort], str]] = {}
    for parsed in sorted(slices, key=lambda s: s.name):
        for ep in parsed.endpoints:
            entry = merged.setdefault(ep.address, (ep, {}, parsed.namespace + "/" + parsed.service))
            for port in parsed.ports:
                entry[1].setdefault((port.port, port.protocol), port)
    out: dict[str, Endpoint] = {}
    for address, (ep, ports, ref) in sorted(merged.items()):
        if not ports:
            continue
        namespace, service = ref.split("/", 1)
        record = Endpoint(
            cell=cell,
            namespace=namespace,
            service=service,
            address=address,
            node=ep.node,
            ports=[
                EndpointPort(name=p.name, port=p.port, protocol=p.protocol)
                for _, p in sorted(ports.items())
            ],
            ready=ep.ready,
            serving=ep.serving,
            terminating=ep.terminating,
        )
        out[record.key()] = record
    return out


# ---- Nodes ---------------------------------------------------------------------------------


def _family_kept(value: Address | Network, cidrs: Iterable[Network]) -> bool:
    """Whether the cell handles the family of ``value`` (it has a CIDR of that family)."""
    return any(c.version == value.version for c in cidrs)


def node_record(obj: Mapping[str, Any], *, config: CellConfig) -> Node:
    """A ``v1/Node``: its InternalIP addresses and ``spec.podCIDRs`` (or ``spec.podCIDR``).
    Addresses and CIDRs of a family the cell has no CIDR of are left out (a dual-stack node in
    an IPv4 cell); the rest must lie in the cell's CIDRs. A node without an InternalIP yet is
    an error until the kubelet reports one."""
    f = _Fields("Node", obj)
    _, name = f.name(obj, namespaced=False)
    f.check(check_dns_subdomain, name, "metadata.name")
    status = f.mapping(obj.get("status"), "status")
    addresses: list[Address] = []
    for i, entry in enumerate(f.items(status.get("addresses"), "status.addresses")):
        item = f.mapping(entry, f"status.addresses[{i}]")
        if item.get("type") != "InternalIP":
            continue
        field = f"status.addresses[{i}].address"
        address = f.check(parse_ip_address, f.string(item.get("address"), field), field)
        if not config.node_cidrs or _family_kept(address, config.node_cidrs):
            addresses.append(address)
    if not addresses:
        raise f.error("status.addresses", "no InternalIP address (of the cell's families) yet")
    spec = f.mapping(obj.get("spec"), "spec")
    raw_cidrs = spec.get("podCIDRs")
    path = "spec.podCIDRs"
    if raw_cidrs is None and spec.get("podCIDR"):
        raw_cidrs, path = [spec["podCIDR"]], "spec.podCIDR"
    cidrs: list[Network] = []
    for i, text in enumerate(f.items(raw_cidrs, path)):
        field = path if path == "spec.podCIDR" else f"{path}[{i}]"
        network = f.check(lambda v: ip_network(v, strict=True), f.string(text, field), field)
        if _family_kept(network, config.pod_cidrs):
            cidrs.append(network)
    try:
        record = Node(cell=config.name, name=name, addresses=addresses, pod_cidrs=cidrs)
    except ValidationError as e:  # pragma: no cover - every field was checked above
        first = e.errors(include_url=False, include_input=False)[0]
        raise f.error(loc_path(first["loc"]), first["msg"]) from None
    f.owned(record, config, "")
    return record


# ---- The peering ConfigMap (format: meshcore.model.peering) -----------------------------------


def peers_from_configmap(obj: Mapping[str, Any], *, config: CellConfig) -> list[Peer]:
    """The Peer records of the ``cellmesh-peers`` ConfigMap. Any bad entry makes the whole
    ConfigMap bad (the last good peers stay)."""
    f = _Fields("ConfigMap", obj)
    f.name(obj, namespaced=True)
    try:
        peers = parse_peer_entries(config.name, f.mapping(obj.get("data"), "data"))
    except PeerEntryError as e:
        raise f.error(e.field, e.reason) from None
    for peer in peers:
        if peer.id == config.id:
            raise f.error(f"data[{peer.name!r}].id", f"{peer.id} is this cell's own id")
    return peers
