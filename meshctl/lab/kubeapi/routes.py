"""URLs and bodies of the Kubernetes API double: which resource a path names, discovery replies.

``route`` maps ``/api/v1/…`` and ``/apis/{group}/{version}/…`` paths (namespaced or not, with a
name and a subresource, and the legacy ``/watch/`` prefix) to a `Route`; ``discovery`` answers
``/api``, ``/apis``, ``/api/v1``, ``/apis/{group}[/{version}]`` and ``/version``; ``parse_body``
reads a JSON (or, for YAML content types, YAML) body. Anything else is a `KubeError`. Pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from meshctl.lab.kubeapi import resources
from meshctl.lab.kubeapi.errors import KubeError
from meshctl.lab.kubeapi.resources import ResourceType

__all__ = ["Route", "discovery", "not_found_path", "parse_body", "route"]


@dataclass(frozen=True)
class Route:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    legacy_watch: bool


def not_found_path(path: str) -> KubeError:
    return KubeError(404, "NotFound", f"the server could not find the requested resource ({path})")


def route(path: str, parts: list[str]) -> Route:
    if parts[0] == "api" and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise not_found_path(path)
    legacy_watch = rest[0] == "watch"
    if legacy_watch:
        rest = rest[1:]
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        inner = resources.by_path(group, version, rest[2])
        if inner is not None and inner.namespaced:
            namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        raise not_found_path(path)
    rt = resources.by_path(group, version, rest[0])
    if rt is None:
        raise not_found_path(path)
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if (not rt.namespaced and namespace is not None) or (
        rt.namespaced and namespace is None and name is not None
    ):
        raise not_found_path(path)
    if subresource is not None and subresource not in rt.subresources:
        raise not_found_path(path)
    return Route(rt, namespace, name, subresource, legacy_watch)


def discovery(parts: list[str], server_address: str) -> dict[str, Any] | None:
    """The discovery document at ``/`` + ``parts``, or None when the path is not discovery."""
    if parts == ["version"]:
        return dict(resources.version_info())
    if parts == ["api"]:
        return resources.api_versions(server_address)
    if parts == ["apis"]:
        return resources.api_group_list()
    if parts[0] == "api" and len(parts) == 2:
        found = resources.api_resource_list("", parts[1])
    elif parts[0] == "apis" and len(parts) == 2:
        groups = resources.api_group_list()["groups"]
        group = next((g for g in groups if g["name"] == parts[1]), None)
        if group is None:
            raise not_found_path("/" + "/".join(parts))
        return {"kind": "APIGroup", "apiVersion": "v1", **group}
    elif parts[0] == "apis" and len(parts) == 3:
        found = resources.api_resource_list(parts[1], parts[2])
    else:
        return None
    if found is None:
        raise not_found_path("/" + "/".join(parts))
    return found


def parse_body(raw: bytes, content_type: str) -> Any:
    """The decoded request body: JSON, or YAML when the content type says so (apply)."""
    if not raw.strip():
        raise KubeError.bad_request("the request needs a body (a JSON or YAML object)")
    try:
        return json.loads(raw)
    except ValueError as json_error:
        if "yaml" not in content_type:
            raise KubeError.bad_request(
                f"the request body is not valid JSON: {json_error}"
            ) from None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as yaml_error:
        raise KubeError.bad_request(f"the request body is not valid YAML: {yaml_error}") from None
