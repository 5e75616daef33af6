"""Kubernetes Service manifests -> ``Service`` records, for ``meshctl apply -f`` and the k8s source.

``load_manifests`` splits a YAML file into documents; ``service_from_manifest`` turns one
``v1/Service`` into a record: metadata and annotations give the name and ClusterMesh flags, and
every cluster IP times every port gives a frontend. A headless service (``clusterIP: None``),
one without an allocated IP, and an ``ExternalName`` service have no frontends. Everything wrong
raises ``ManifestError`` naming the source and the field (``svc.yaml: spec.ports[1].port: ...``);
unknown annotation values are not errors but warnings carried on the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address
from typing import Any, NamedTuple

import yaml
from pydantic import ValidationError

from meshcore.model.annotations import parse_service_annotations
from meshcore.model.codec import loc_path
from meshcore.model.errors import ManifestError
from meshcore.model.names import (
    check_cell_name,
    check_dns_label,
    check_port,
    check_port_name,
    cut,
    parse_ip_address,
    shown,
)
from meshcore.model.records import Frontend, Service

__all__ = [
    "MAX_EXPANDED_NODES",
    "ManifestDocument",
    "check_annotation_values",
    "document_kind",
    "is_service_manifest",
    "load_documents",
    "load_manifests",
    "service_from_manifest",
    "service_ref_from_manifest",
]

_HEADLESS = "None"
# A Service is a few dozen nodes; a file of thousands of them stays far below this once its
# aliases are expanded, while a 400-byte alias bomb expands to hundreds of millions.
MAX_EXPANDED_NODES = 100_000


class _Port(NamedTuple):
    name: str
    port: int
    protocol: str


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


class ManifestDocument(NamedTuple):
    """One non-empty document of a manifest file: its 1-based number and line, and its body."""

    number: int
    line: int
    body: dict[str, Any]


def _expanded_size(root: yaml.Node, *, limit: int, source: str, number: int) -> int:
    """How many nodes the document ``root`` becomes with every alias expanded.

    An alias is the same node object as its anchor: counted once per use (memoized, so this
    costs one pass over the distinct nodes). A ManifestError beyond ``limit`` or for an alias
    inside its own anchor.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        known = sizes.get(key)
        if known is not None:
            return known
        if key in open_nodes:
            raise ManifestError(
                source,
                "",
                f"document {number}: an alias refers to its own anchor (a recursive document)",
                line=node.start_mark.line + 1,
            )
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
        open_nodes.discard(key)
        if total > limit:
            raise ManifestError(
                source,
                "",
                f"document {number}: YAML aliases expand it to more than {limit} nodes "
                "(an alias bomb?); write the values out instead of repeating aliases",
                line=root.start_mark.line + 1,
            )
        sizes[key] = total
        return total

    return size(root)


def load_documents(text: str, *, source: str) -> list[ManifestDocument]:
    """The non-empty YAML documents of ``text``, numbered; each must be a mapping.

    Aliases may not expand a document beyond ``MAX_EXPANDED_NODES`` nodes: shared values are
    cheap to parse but cost their expanded size in everything that walks them.
    """
    loader = yaml.SafeLoader(text)
    docs: list[ManifestDocument] = []
    try:
        number = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node() said there is one
                break
            number += 1
            _expanded_size(node, limit=MAX_EXPANDED_NODES, source=source, number=number)
            doc = loader.construct_document(node)
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise ManifestError(
                    source,
                    "",
                    f"document {number} is {_kind_of(doc)}, not a mapping",
                    line=node.start_mark.line + 1,
                )
            docs.append(ManifestDocument(number, node.start_mark.line + 1, doc))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "syntax error"
        line = mark.line + 1 if mark is not None else None
        raise ManifestError(source, "", f"invalid YAML: {cut(problem)}", line=line) from e
    except yaml.YAMLError as e:
        raise ManifestError(source, "", f"invalid YAML: {cut(str(e))}") from e
    except RecursionError:
        raise ManifestError(source, "", "invalid YAML: nested too deeply") from None
    except ManifestError:
        raise
    except ValueError as e:  # e.g. an integer past Python's digit limit
        raise ManifestError(source, "", f"invalid YAML: {cut(str(e))}") from None
    finally:
        loader.dispose()
    return docs


def load_manifests(text: str, *, source: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of ``text``; each must be a mapping (see `load_documents`)."""
    return [doc.body for doc in load_documents(text, source=source)]


def document_kind(doc: Mapping[str, Any]) -> str:
    """``apiVersion/kind`` of a document, cut for messages (whatever the values are)."""
    version, kind = doc.get("apiVersion"), doc.get("kind")
    text = f"{version}/{kind}" if isinstance(version, str) and isinstance(kind, str) else None
    return cut(text, 80) if text is not None else f"kind {shown(kind)}"


def check_annotation_values(doc: ManifestDocument, *, source: str) -> None:
    """Refuse unknown annotation values of a Service manifest (what ``meshctl apply`` does).

    The server accepts them (the key's default, reported as a warning); a client refuses them
    before anything is written, naming the document, the annotation, the value and the allowed
    values. Other faults are left to `service_from_manifest` (the server's answer).
    """
    metadata = doc.body.get("metadata")
    if not isinstance(metadata, Mapping):
        return
    try:
        unknown = parse_service_annotations(_annotations(metadata, source)).unknown
    except ManifestError:
        return
    if unknown:
        namespace, name = metadata.get("namespace", "default"), metadata.get("name")
        what = f"document {doc.number} (Service {cut(str(namespace), 63)}/{cut(str(name), 63)})"
        problems = "; ".join(
            f"metadata.annotations[{shown(u.key)}]: unknown value {shown(u.value)} "
            f"(allowed: {', '.join(repr(a) for a in u.allowed)})"
            for u in unknown
        )
        raise ManifestError(source, "", f"{what}: {problems}", line=doc.line)


def is_service_manifest(doc: Mapping[str, Any]) -> bool:
    """Whether ``doc`` is a core ``v1`` ``Service`` (files for ``apply`` may hold other kinds)."""
    return doc.get("apiVersion") == "v1" and doc.get("kind") == "Service"


def _check_is_service(doc: Mapping[str, Any], source: str) -> None:
    if doc.get("kind") != "Service":
        raise ManifestError(source, "kind", f"expected 'Service', got {shown(doc.get('kind'))}")
    if doc.get("apiVersion") != "v1":
        raise ManifestError(
            source, "apiVersion", f"expected 'v1', got {shown(doc.get('apiVersion'))}"
        )


def _mapping(value: object, path: str, source: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ManifestError(source, path, f"expected a mapping, got {_kind_of(value)}")
    return value


def _string(value: object, path: str, source: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(source, path, f"expected a string, got {_kind_of(value)}")
    return value


def service_ref_from_manifest(doc: Mapping[str, Any], *, source: str) -> tuple[str, str]:
    """``(namespace, name)`` of a Service manifest, e.g. to delete it; namespace defaults."""
    _check_is_service(doc, source)
    metadata = _mapping(doc.get("metadata"), "metadata", source)
    if metadata.get("name") is None:
        raise ManifestError(source, "metadata.name", "required")
    name = _string(metadata["name"], "metadata.name", source)
    namespace = _string(metadata.get("namespace", "default"), "metadata.namespace", source)
    for path, value in (("metadata.namespace", namespace), ("metadata.name", name)):
        try:
            check_dns_label(value)
        except ValueError as e:
            raise ManifestError(source, path, str(e)) from None
    return namespace, name


def _annotations(metadata: Mapping[str, Any], source: str) -> dict[str, str]:
    annotations = _mapping(metadata.get("annotations"), "metadata.annotations", source)
    out: dict[str, str] = {}
    for key, value in annotations.items():
        path = f"metadata.annotations[{shown(str(key))}]"
        if not isinstance(value, str):
            hint = f' (quote it: "{str(value).lower()}")' if isinstance(value, bool) else ""
            raise ManifestError(source, path, f"must be a string, got {_kind_of(value)}{hint}")
        out[str(key)] = value
    return out


def _cluster_ips(spec: Mapping[str, Any], source: str) -> list[IPv4Address | IPv6Address]:
    """The service's VIPs: ``clusterIPs`` (dual stack) or ``clusterIP``; none when headless."""
    if spec.get("type") == "ExternalName":
        return []
    single = _string(spec.get("clusterIP") or "", "spec.clusterIP", source)
    raw_list = spec.get("clusterIPs")
    if raw_list is None:
        texts, path = ([single] if single else []), "spec.clusterIP"
    else:
        if not isinstance(raw_list, list):
            raise ManifestError(
                source, "spec.clusterIPs", f"expected a list, got {_kind_of(raw_list)}"
            )
        texts = [_string(v, f"spec.clusterIPs[{i}]", source) for i, v in enumerate(raw_list)]
        path = "spec.clusterIPs"
        if single and texts and texts[0] != single:
            raise ManifestError(
                source,
                "spec.clusterIPs[0]",
                f"{shown(texts[0])} must equal spec.clusterIP {shown(single)}",
            )
    if _HEADLESS in texts:
        if texts != [_HEADLESS]:
            raise ManifestError(source, path, "'None' (headless) cannot be mixed with addresses")
        return []
    if len(texts) > 2:
        raise ManifestError(source, path, f"at most 2 addresses (one per family), got {len(texts)}")
    vips: list[IPv4Address | IPv6Address] = []
    for i, text in enumerate(texts):
        item_path = path if raw_list is None else f"{path}[{i}]"
        try:
            vips.append(parse_ip_address(text))
        except ValueError as e:
            raise ManifestError(source, item_path, str(e)) from None
    if len(vips) == 2 and vips[0].version == vips[1].version:
        raise ManifestError(source, path, "a dual-stack service has one IPv4 and one IPv6 address")
    return vips


def _port(entry: object, path: str, source: str) -> _Port:
    item = _mapping(entry, path, source)
    name = _string(item.get("name", ""), f"{path}.name", source)
    try:
        check_port_name(name)
    except ValueError as e:
        raise ManifestError(source, f"{path}.name", str(e)) from None
    if "port" not in item:
        raise ManifestError(source, f"{path}.port", "required")
    try:
        port = check_port(item["port"])
    except ValueError as e:
        raise ManifestError(source, f"{path}.port", str(e)) from None
    protocol = item.get("protocol", "TCP")
    if protocol == "SCTP":
        raise ManifestError(source, f"{path}.protocol", "SCTP is not supported (TCP or UDP)")
    if protocol not in ("TCP", "UDP"):
        raise ManifestError(
            source, f"{path}.protocol", f"{shown(protocol)} is not a valid protocol (TCP or UDP)"
        )
    return _Port(name, port, protocol)


def _ports(spec: Mapping[str, Any], source: str) -> list[_Port]:
    raw = spec.get("ports") or []
    if not isinstance(raw, list):
        raise ManifestError(source, "spec.ports", f"expected a list, got {_kind_of(raw)}")
    ports: list[_Port] = []
    names: dict[str, int] = {}
    numbers: dict[tuple[int, str], int] = {}
    for i, entry in enumerate(raw):
        path = f"spec.ports[{i}]"
        port = _port(entry, path, source)
        if len(raw) > 1 and not port.name:
            raise ManifestError(source, f"{path}.name", "required when a service has several ports")
        if port.name in names:
            raise ManifestError(
                source,
                f"{path}.name",
                f"duplicate name {port.name!r} (also spec.ports[{names[port.name]}])",
            )
        if (port.port, port.protocol) in numbers:
            first = numbers[port.port, port.protocol]
            raise ManifestError(
                source,
                path,
                f"duplicate port {port.port}/{port.protocol} (also spec.ports[{first}])",
            )
        names[port.name] = numbers[port.port, port.protocol] = i
        ports.append(port)
    return ports


def service_from_manifest(
    doc: Mapping[str, Any], *, cell: str, source: str = "<manifest>", default_global: bool = False
) -> Service:
    """The ``Service`` record that cell ``cell`` publishes for a ``v1/Service`` manifest.
    ``default_global``: global unless its own annotation says otherwise (a global Namespace)."""
    try:
        check_cell_name(cell)
    except ValueError as e:
        raise ManifestError(source, "", f"cell: {e}") from None
    namespace, name = service_ref_from_manifest(doc, source=source)
    metadata = _mapping(doc.get("metadata"), "metadata", source)
    flags = parse_service_annotations(_annotations(metadata, source), default_global=default_global)
    spec = _mapping(doc.get("spec"), "spec", source)
    vips = _cluster_ips(spec, source)
    ports = _ports(spec, source)
    if vips and not ports:
        raise ManifestError(
            source, "spec.ports", "required: a service with a cluster IP needs a port"
        )
    try:
        return Service(
            cell=cell,
            namespace=namespace,
            name=name,
            frontends=[
                Frontend(name=p.name, vip=vip, port=p.port, protocol=p.protocol)
                for vip in vips
                for p in ports
            ],
            global_=flags.global_,
            shared=flags.shared,
            affinity=flags.affinity,
            warnings=list(flags.warnings),
        )
    except ValidationError as e:  # pragma: no cover - every field was checked above
        first = e.errors(include_url=False, include_input=False)[0]
        raise ManifestError(source, loc_path(first["loc"]), first["msg"]) from None
