"""Label and field selectors as kube-apiserver parses them, as matchers over plain objects.

Labels: equality (``a=b``, ``a==b``, ``a!=b``), sets (``a in (x,y)``, ``a notin (x)``),
existence (``a``, ``!a``); ``!=`` and ``notin`` also match objects without the label. Fields:
``metadata.name`` and ``metadata.namespace`` (plus a few per-kind fields) with ``=``, ``==``,
``!=``. A selector that does not parse is a `KubeError` 400 naming the offending term. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from meshctl.lab.kubeapi.errors import KubeError

__all__ = ["Matcher", "parse_field_selector", "parse_label_selector"]

Matcher = Callable[[dict[str, Any]], bool]

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_NOT_EXISTS = re.compile(rf"^!\s*({_KEY})$")
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s*\(([^()]*)\)$")
_EQUALITY = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_EXISTS = re.compile(rf"^({_KEY})$")
_VALUE_ONLY = re.compile(rf"^{_VALUE}$")


def _split_terms(selector: str) -> list[str]:
    terms: list[str] = []
    depth = 0
    current: list[str] = []
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    terms.append("".join(current).strip())
    return [t for t in terms if t]


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels if isinstance(labels, dict) else {}


def _label_term(term: str) -> Matcher:
    if m := _NOT_EXISTS.match(term):
        key = m.group(1)
        return lambda obj: key not in _labels(obj)
    if m := _SET.match(term):
        key, op = m.group(1), m.group(2)
        values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
        for value in values:
            if not _VALUE_ONLY.match(value):
                raise KubeError.bad_request(
                    f"unable to parse requirement: invalid label value {value!r} in {term!r}"
                )
        if op == "in":
            return lambda obj: _labels(obj).get(key) in values
        return lambda obj: _labels(obj).get(key) not in values
    if m := _EQUALITY.match(term):
        key, op, value = m.group(1), m.group(2), m.group(3)
        if op == "!=":
            return lambda obj: _labels(obj).get(key) != value
        return lambda obj: _labels(obj).get(key) == value
    if m := _EXISTS.match(term):
        key = m.group(1)
        return lambda obj: key in _labels(obj)
    raise KubeError.bad_request(f"unable to parse requirement: {term!r} in label selector")


def parse_label_selector(selector: str | None) -> Matcher:
    """A matcher for ``labelSelector``; an empty or absent selector matches everything."""
    if not selector:
        return lambda obj: True
    matchers = [_label_term(term) for term in _split_terms(selector)]
    return lambda obj: all(m(obj) for m in matchers)


# Fields kube-apiserver lets each kind select on besides metadata.name and metadata.namespace.
_EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec.nodeName", "status.phase", "status.podIP", "spec.serviceAccountName"),
    "Node": ("spec.unschedulable",),
    "Secret": ("type",),
    "Namespace": ("status.phase",),
}
_FIELD = re.compile(r"^([A-Za-z.]+)\s*(==|=|!=)\s*(.*)$")


def _field_value(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _field_term(field: str, value: str, *, negate: bool) -> Matcher:
    return lambda obj: (_field_value(obj, field) == value) != negate


def parse_field_selector(selector: str | None, kind: str) -> Matcher:
    """A matcher for ``fieldSelector`` on objects of ``kind``; unknown fields are a 400."""
    if not selector:
        return lambda obj: True
    allowed = ("metadata.name", "metadata.namespace", *_EXTRA_FIELDS.get(kind, ()))
    matchers: list[Matcher] = []
    for term in _split_terms(selector):
        m = _FIELD.match(term)
        if not m:
            raise KubeError.bad_request(f"invalid field selector term {term!r}")
        field, op, value = m.group(1), m.group(2), m.group(3).strip()
        if field not in allowed:
            raise KubeError.bad_request(
                f"field label not supported: {field} (for {kind}: {', '.join(allowed)})"
            )
        matchers.append(_field_term(field, value, negate=op == "!="))
    return lambda obj: all(m(obj) for m in matchers)
