"""The resource table of the Kubernetes API double and the discovery documents built from it.

One `ResourceType` per served resource (group, version, plural, kind, namespaced, subresources,
the name rule kube-apiserver validates with); ``/api``, ``/apis``, ``/api/v1``,
``/apis/{group}/{version}`` and ``/version`` are rendered from the table, which is what the
clients' discovery (``kubernetes.dynamic.DynamicClient``) reads. Pure: no IO.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RESOURCES",
    "ResourceType",
    "api_group_list",
    "api_resource_list",
    "api_versions",
    "by_kind",
    "by_path",
    "name_problem",
    "version_info",
]

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_SUB_VERBS = ["get", "patch", "update"]


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    # How kube-apiserver validates the name: "subdomain" (DNS-1123), "label" (DNS-1123 label),
    # "label1035" (DNS-1035 label: Services), "path" (any path segment: RBAC objects).
    name_rule: str = "subdomain"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> tuple[str, str]:
        return (self.group, self.version)

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "namespace", "Namespace", False, ("status",),
                 ("ns",), "label"),
    ResourceType("", "v1", "nodes", "node", "Node", False, ("status",), ("no",)),
    ResourceType("", "v1", "services", "service", "Service", True, ("status",), ("svc",),
                 "label1035"),
    ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", True, (), ("cm",)),
    ResourceType("", "v1", "secrets", "secret", "Secret", True),
    ResourceType("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", True, (),
                 ("sa",)),
    ResourceType("", "v1", "pods", "pod", "Pod", True, ("status",), ("po",)),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice",
                 True),
    ResourceType("apps", "v1", "deployments", "deployment", "Deployment", True, ("status",),
                 ("deploy",)),
    ResourceType("apps", "v1", "daemonsets", "daemonset", "DaemonSet", True, ("status",),
                 ("ds",)),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", True,
                 name_rule="path"),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding",
                 "RoleBinding", True, name_rule="path"),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole",
                 "ClusterRole", False, name_rule="path"),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterrolebindings",
                 "clusterrolebinding", "ClusterRoleBinding", False, name_rule="path"),
    ResourceType("policy", "v1", "poddisruptionbudgets", "poddisruptionbudget",
                 "PodDisruptionBudget", True, ("status",), ("pdb",)),
)  # fmt: skip

_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES}


def by_path(group: str, version: str, plural: str) -> ResourceType | None:
    return _BY_PATH.get((group, version, plural))


def by_kind(api_version: str, kind: str) -> ResourceType | None:
    return _BY_KIND.get((api_version, kind))


def group_versions() -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for r in RESOURCES:
        if r.group_version not in seen:
            seen.append(r.group_version)
    return seen


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def api_group_list() -> dict[str, Any]:
    groups = []
    for group, version in group_versions():
        if not group:
            continue
        gv = {"groupVersion": f"{group}/{version}", "version": version}
        groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    members = [r for r in RESOURCES if r.group_version == (group, version)]
    if not members:
        return None
    resources: list[dict[str, Any]] = []
    for r in members:
        entry: dict[str, Any] = {
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": list(_VERBS),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        resources.append(entry)
        for sub in r.subresources:
            resources.append(
                {
                    "name": f"{r.plural}/{sub}",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": list(_SUB_VERBS),
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def version_info() -> dict[str, str]:
    return {
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-cellmesh-double",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def name_problem(rule: str, name: str) -> str | None:
    """Why ``name`` is not a valid object name under ``rule``, or None when it is."""
    if rule == "path":
        if name in (".", "..") or "/" in name or "%" in name:
            return f'Invalid value: "{name}": may not be "." or ".." or contain "/" or "%"'
        return None
    if rule == "label1035":
        if len(name) > 63 or not _LABEL_1035.match(name):
            return (
                f'Invalid value: "{name}": a DNS-1035 label must consist of lower case '
                "alphanumeric characters or '-', start with an alphabetic character, and end "
                "with an alphanumeric character (at most 63 characters)"
            )
        return None
    if rule == "label":
        if len(name) > 63 or not _LABEL.match(name):
            return (
                f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower '
                "case alphanumeric characters or '-', and must start and end with an "
                "alphanumeric character (at most 63 characters)"
            )
        return None
    if len(name) > 253 or not _SUBDOMAIN.match(name):
        return (
            f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
            "case alphanumeric characters, '-' or '.', and must start and end with an "
            "alphanumeric character (at most 253 characters)"
        )
    return None
