"""Queries of the Kubernetes API double: list/watch parameters, continue tokens, watch views.

`ListQuery` parses what a list or watch asks for (selectors, ``resourceVersion`` and its match,
``limit``/``continue``, ``timeoutSeconds``, bookmarks); a continue token is opaque base64 JSON
holding the resourceVersion of the first page and the last key served, as kube-apiserver's;
``watch_projection`` turns a store event into what one watch sends. Pure.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from meshctl.lab.kubeapi.errors import KubeError
from meshctl.lab.kubeapi.resources import ResourceType
from meshctl.lab.kubeapi.selectors import Matcher, parse_field_selector, parse_label_selector
from meshctl.lab.kubeapi.store import Event

__all__ = [
    "ListQuery",
    "Projection",
    "decode_continue",
    "encode_continue",
    "for_list",
    "is_true",
    "name_of",
    "watch_projection",
]


class ListQuery:
    """The query parameters of a list or watch, parsed (a bad one is a 400)."""

    def __init__(self, rt: ResourceType, params: dict[str, str]) -> None:
        self.label_selector = params.get("labelSelector") or ""
        self.field_selector = params.get("fieldSelector") or ""
        self.matches: Matcher = _both(
            parse_label_selector(self.label_selector),
            parse_field_selector(self.field_selector, rt.kind),
        )
        self.resource_version = params.get("resourceVersion") or ""
        self.rv_match = params.get("resourceVersionMatch") or ""
        self.continue_token = params.get("continue") or ""
        self.limit = _int_param(params, "limit")
        self.timeout_seconds = _int_param(params, "timeoutSeconds")
        self.bookmarks = is_true(params.get("allowWatchBookmarks"))
        self.send_initial_events = is_true(params.get("sendInitialEvents"))
        if self.resource_version and not self.resource_version.isdigit():
            raise KubeError.bad_request(
                f"invalid resourceVersion {self.resource_version!r}: must be an integer"
            )
        if self.rv_match not in ("", "Exact", "NotOlderThan"):
            raise KubeError.bad_request(
                f"invalid resourceVersionMatch {self.rv_match!r}: Exact or NotOlderThan"
            )

    @property
    def rv(self) -> int | None:
        return int(self.resource_version) if self.resource_version else None


def is_true(value: str | None) -> bool:
    """A boolean query parameter as Go's strconv.ParseBool reads it (what the clients send)."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _int_param(params: dict[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise KubeError.bad_request(f"invalid {name} {raw!r}: must be an integer") from None
    if value < 0:
        raise KubeError.bad_request(f"invalid {name} {raw!r}: must not be negative")
    return value


def _both(a: Matcher, b: Matcher) -> Matcher:
    return lambda obj: a(obj) and b(obj)


def encode_continue(rv: int, last: tuple[str, str]) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": f"{last[0]}\x00{last[1]}"})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        namespace, name = str(data["start"]).split("\x00", 1)
        return int(data["rv"]), (namespace, name)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise KubeError.bad_request(f"continue key is not valid: {token!r}") from None


def name_of(obj: dict[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return (metadata.get("namespace") or "", metadata.get("name") or "")


def for_list(obj: dict[str, Any]) -> dict[str, Any]:
    # kube-apiserver leaves apiVersion and kind off the items of a list.
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}


Projection = Callable[[Event], tuple[str, dict[str, Any]] | None]


def watch_projection(rt: ResourceType, namespace: str | None, matches: Matcher) -> Projection:
    """What a watch on ``rt`` (in ``namespace``, with selectors) sends for a store event.

    An object that starts or stops matching the selectors arrives as ADDED or DELETED, as from
    kube-apiserver's watch cache.
    """

    def project(event: Event) -> tuple[str, dict[str, Any]] | None:
        if event.rt is not rt:
            return None
        if namespace is not None and (event.obj["metadata"].get("namespace") or "") != namespace:
            return None
        now = matches(event.obj)
        if event.type == "MODIFIED":
            before = event.prev is not None and matches(event.prev)
            if before and now:
                return "MODIFIED", event.obj
            if now:
                return "ADDED", event.obj
            if before:
                return "DELETED", event.obj
            return None
        return (event.type, event.obj) if now else None

    return project
