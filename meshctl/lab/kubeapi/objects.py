"""What kube-apiserver checks and fills in on every write, for the kinds the double serves.

``validate`` refuses an object that is not one (422 naming the field: missing or invalid
``metadata.name``, ``apiVersion``/``kind`` not those of the URL, a namespace that differs from
the request's). ``prepare`` sets the server-owned metadata (uid, creationTimestamp, generation —
bumped when anything outside metadata and status changes), keeps a stored object's status on a
write to the main resource of a kind with a status subresource, turns a Secret's ``stringData``
into ``data`` and defaults Services (type, port protocol and targetPort, a ClusterIP from the
service CIDR unless headless). Pure apart from the allocator passed in.
"""

from __future__ import annotations

import base64
import copy
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from meshctl.lab.kubeapi.errors import KubeError
from meshctl.lab.kubeapi.resources import ResourceType, name_problem

__all__ = ["now_timestamp", "prepare", "same_object", "validate"]


def now_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def validate(
    rt: ResourceType,
    obj: Any,
    *,
    namespace: str | None,
    name: str | None = None,
) -> None:
    """Refuse ``obj`` as a body for ``rt`` (in ``namespace``, at URL ``name`` if any)."""
    if not isinstance(obj, dict):
        got = type(obj).__name__
        raise KubeError.invalid(
            rt.kind,
            name or "",
            [("body", f"Invalid value: must be a JSON or YAML object, got {got}")],
            rt.group,
        )
    metadata = obj.get("metadata")
    obj_name = metadata.get("name") if isinstance(metadata, dict) else None
    shown = obj_name if isinstance(obj_name, str) else (name or "")
    causes: list[tuple[str, str]] = []
    if metadata is not None and not isinstance(metadata, dict):
        causes.append(("metadata", "Invalid value: must be an object"))
    if obj.get("apiVersion") != rt.api_version:
        causes.append(
            ("apiVersion", f'Invalid value: "{obj.get("apiVersion")}": must be {rt.api_version}')
        )
    if obj.get("kind") != rt.kind:
        causes.append(("kind", f'Invalid value: "{obj.get("kind")}": must be {rt.kind}'))
    if not isinstance(obj_name, str) or not obj_name:
        causes.append(("metadata.name", "Required value: name or generateName is required"))
    else:
        problem = name_problem(rt.name_rule, obj_name)
        if problem:
            causes.append(("metadata.name", problem))
        if name is not None and obj_name != name:
            causes.append(
                ("metadata.name", f'Invalid value: "{obj_name}": does not match the URL ({name})')
            )
    if isinstance(metadata, dict):
        obj_ns = metadata.get("namespace")
        if rt.namespaced and obj_ns not in (None, "", namespace):
            causes.append(
                (
                    "metadata.namespace",
                    f'Invalid value: "{obj_ns}": does not match the namespace of the '
                    f"request ({namespace})",
                )
            )
        for field in ("labels", "annotations"):
            value = metadata.get(field)
            if value is None:
                continue
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                causes.append((f"metadata.{field}", "Invalid value: must map strings to strings"))
    if causes:
        raise KubeError.invalid(rt.kind, shown, causes, rt.group)


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def same_object(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal apart from resourceVersion and managedFields times (a write that changes nothing)."""

    def strip(obj: dict[str, Any]) -> dict[str, Any]:
        metadata = dict(obj.get("metadata") or {})
        metadata.pop("resourceVersion", None)
        metadata["managedFields"] = [
            {k: v for k, v in e.items() if k != "time"}
            for e in metadata.get("managedFields") or []
            if isinstance(e, dict)
        ]
        return {**obj, "metadata": metadata}

    return strip(a) == strip(b)


def prepare(
    rt: ResourceType,
    new: dict[str, Any],
    old: dict[str, Any] | None,
    *,
    namespace: str | None,
    subresource: str | None = None,
    status_from_body: bool = False,
    allocate_cluster_ip: Callable[[], str] | None = None,
) -> dict[str, Any]:
    """The object to store for a write of ``new`` over ``old`` (None: a create).

    ``status_from_body``: the write sets the status too (the double's direct ``put``), as a
    controller's status update would.
    """
    obj = copy.deepcopy(new)
    if subresource == "status" and old is not None:
        # A status write changes the status and nothing else.
        obj = {**copy.deepcopy(old), "status": obj.get("status", {})}
    elif rt.has_status and not status_from_body:
        if old is not None:
            if "status" in old:
                obj["status"] = copy.deepcopy(old["status"])
            else:
                obj.pop("status", None)
        elif rt.kind != "Namespace":
            obj.pop("status", None)
    metadata = dict(obj.get("metadata") or {})
    if rt.namespaced:
        metadata["namespace"] = namespace
    else:
        metadata.pop("namespace", None)
    for server_field in ("uid", "creationTimestamp", "generation", "resourceVersion"):
        metadata.pop(server_field, None)
    if old is None:
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = now_timestamp()
        metadata["generation"] = 1
    else:
        old_meta = old.get("metadata") or {}
        metadata["uid"] = old_meta.get("uid")
        metadata["creationTimestamp"] = old_meta.get("creationTimestamp")
    if not metadata.get("managedFields"):
        metadata.pop("managedFields", None)
    obj["metadata"] = metadata
    if rt.kind == "Secret":
        _secret_string_data(obj)
    elif rt.kind == "Service":
        _default_service(obj, old, allocate_cluster_ip)
    elif rt.kind == "Namespace":
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        if not status_from_body or "status" not in obj:
            obj["status"] = {"phase": "Active"}
    if old is not None:
        generation = int((old.get("metadata") or {}).get("generation") or 1)
        changed = _spec_part(obj) != _spec_part(old)
        metadata["generation"] = generation + 1 if changed else generation
    return obj


def _secret_string_data(obj: dict[str, Any]) -> None:
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict):
        data = dict(obj.get("data") or {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data
    obj.setdefault("type", "Opaque")


def _default_service(
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    allocate_cluster_ip: Callable[[], str] | None,
) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        spec = {}
        obj["spec"] = spec
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    ports = spec.get("ports")
    if isinstance(ports, list):
        for port in ports:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                if "port" in port:
                    port.setdefault("targetPort", port["port"])
    if spec["type"] == "ExternalName":
        return
    old_spec = (old or {}).get("spec") or {}
    if not spec.get("clusterIP") and old_spec.get("clusterIP"):
        spec["clusterIP"] = old_spec["clusterIP"]
        spec["clusterIPs"] = list(old_spec.get("clusterIPs") or [old_spec["clusterIP"]])
    if not spec.get("clusterIP") and allocate_cluster_ip is not None:
        spec["clusterIP"] = allocate_cluster_ip()
    if spec.get("clusterIP") and not spec.get("clusterIPs"):
        spec["clusterIPs"] = [spec["clusterIP"]]
    if spec.get("clusterIP") and spec["clusterIP"] != "None":
        families = ["IPv6" if ":" in ip else "IPv4" for ip in spec["clusterIPs"]]
        spec.setdefault("ipFamilies", families)
        spec.setdefault(
            "ipFamilyPolicy", "SingleStack" if len(families) == 1 else "RequireDualStack"
        )
