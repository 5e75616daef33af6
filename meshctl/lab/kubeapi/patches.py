"""Patches of the Kubernetes API double: JSON merge patch, JSON patch and server-side apply.

``merge_patch`` is RFC 7386 (also used for strategic merge patches, a documented
simplification). ``json_patch`` is RFC 6902. ``apply`` merges an applied configuration into the
live object the way server-side apply does for the kinds served: maps merge recursively, the
lists Kubernetes keys by ``name`` (containers, ports, env, volumes, volumeMounts, …) merge item by
item, other lists are replaced; fields the same manager applied before and no longer applies
are removed unless another manager owns them. Ownership is kept as real ``fieldsV1`` sets.
Field conflicts between managers are not detected (``force`` is accepted and has no effect).
Pure: no IO.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from meshctl.lab.kubeapi.errors import KubeError

__all__ = ["apply", "fields_of", "json_patch", "merge_patch"]

# Lists that server-side apply merges by their items' "name" (listType=map, listMapKeys=name).
_KEYED_LISTS = frozenset(
    {
        "containers",
        "initContainers",
        "ephemeralContainers",
        "ports",
        "env",
        "volumes",
        "volumeMounts",
        "imagePullSecrets",
    }
)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: a map merges key by key (null deletes), anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise KubeError.bad_request(f"invalid JSON pointer {path!r}: must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KubeError(422, "Invalid", f"JSON patch: path {path!r} does not exist")
    return node


def _add(doc: Any, parts: list[str], value: Any, path: str) -> Any:
    if not parts:
        return value
    parent = _resolve(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise KubeError(422, "Invalid", f"JSON patch: bad array index in {path!r}")
    else:
        raise KubeError(422, "Invalid", f"JSON patch: cannot add at {path!r}")
    return doc


def _remove(doc: Any, parts: list[str], path: str) -> Any:
    if not parts:
        raise KubeError(422, "Invalid", "JSON patch: cannot remove the whole document")
    parent = _resolve(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise KubeError(422, "Invalid", f"JSON patch: path {path!r} does not exist")


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 over a copy of ``target``; an unknown op or a bad path is a 422."""
    if not isinstance(operations, list):
        raise KubeError.bad_request("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for index, op in enumerate(operations):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise KubeError.bad_request(f"JSON patch operation {index} needs 'op' and 'path'")
        kind, path = op["op"], str(op["path"])
        parts = _pointer(path)
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")), path)
        elif kind == "remove":
            _remove(doc, parts, path)
        elif kind == "replace":
            _resolve(doc, parts, path)
            if parts:
                _remove(doc, parts, path)
            doc = _add(doc, parts, copy.deepcopy(op.get("value")), path)
        elif kind in ("move", "copy"):
            source = str(op.get("from", ""))
            value = copy.deepcopy(_resolve(doc, _pointer(source), source))
            if kind == "move":
                _remove(doc, _pointer(source), source)
            doc = _add(doc, parts, value, path)
        elif kind == "test":
            if _resolve(doc, parts, path) != op.get("value"):
                raise KubeError(422, "Invalid", f"JSON patch: test failed at {path!r}")
        else:
            raise KubeError.bad_request(f"JSON patch operation {index}: unknown op {kind!r}")
    return doc


def _keyed(field: str | None, *lists: Any) -> bool:
    if field not in _KEYED_LISTS:
        return False
    return all(
        isinstance(item, dict) and isinstance(item.get("name"), str)
        for items in lists
        if isinstance(items, list)
        for item in items
    )


def _item_key(name: str) -> str:
    return "k:" + json.dumps({"name": name}, separators=(",", ":"))


def fields_of(applied: Any, field: str | None = None) -> dict[str, Any]:
    """The ``fieldsV1`` set of an applied configuration (what its manager now owns)."""
    if isinstance(applied, dict):
        out: dict[str, Any] = {}
        for key, value in applied.items():
            if value is None or (field is None and key in ("apiVersion", "kind")):
                continue
            if field is None and key == "metadata" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in ("name", "namespace")}
                if not value:
                    continue
            out[f"f:{key}"] = fields_of(value, key)
        return out
    if isinstance(applied, list) and _keyed(field, applied):
        return {_item_key(item["name"]): {".": {}, **fields_of(item, "")} for item in applied}
    return {}


def _apply_value(live: Any, applied: Any, field: str | None) -> Any:
    if isinstance(applied, dict):
        result = dict(live) if isinstance(live, dict) else {}
        for key, value in applied.items():
            if value is None:
                result.pop(key, None)
            else:
                result[key] = _apply_value(result.get(key), value, key)
        return result
    if isinstance(applied, list) and isinstance(live, list) and _keyed(field, applied, live):
        by_name = {item["name"]: item for item in live}
        merged = [_apply_value(by_name.get(item["name"]), item, None) for item in applied]
        applied_names = {item["name"] for item in applied}
        return merged + [item for item in live if item["name"] not in applied_names]
    return copy.deepcopy(applied)


def _prune(live: Any, previous: dict[str, Any], now: dict[str, Any], others: dict[str, Any]) -> Any:
    """Remove from ``live`` what was in ``previous`` but not in ``now`` and not in ``others``."""
    for key, prev_sub in previous.items():
        if key == ".":
            continue
        now_sub = now.get(key)
        other_sub = others.get(key)
        owned_itself = not prev_sub or "." in prev_sub  # a leaf, or a list item as a whole
        if now_sub is None and other_sub is None and owned_itself:
            live = _drop(live, key)
        elif isinstance(prev_sub, dict) and prev_sub:
            # A map the manager only owned fields of (metadata with its labels): prune inside.
            child = _child(live, key)
            if child is not None:
                pruned = _prune(child, prev_sub, now_sub or {}, other_sub or {})
                if pruned in ({}, []) and now_sub is None and other_sub is None:
                    live = _drop(live, key)  # emptied, and nobody owns it any more
                else:
                    live = _set_child(live, key, pruned)
    return live


def _child(live: Any, key: str) -> Any:
    if key.startswith("f:") and isinstance(live, dict):
        return live.get(key[2:])
    if key.startswith("k:") and isinstance(live, list):
        name = json.loads(key[2:]).get("name")
        return next((i for i in live if isinstance(i, dict) and i.get("name") == name), None)
    return None


def _set_child(live: Any, key: str, value: Any) -> Any:
    if key.startswith("f:") and isinstance(live, dict):
        return {**live, key[2:]: value}
    if key.startswith("k:") and isinstance(live, list):
        name = json.loads(key[2:]).get("name")
        return [value if isinstance(i, dict) and i.get("name") == name else i for i in live]
    return live


def _drop(live: Any, key: str) -> Any:
    if key.startswith("f:") and isinstance(live, dict):
        return {k: v for k, v in live.items() if k != key[2:]}
    if key.startswith("k:") and isinstance(live, list):
        name = json.loads(key[2:]).get("name")
        return [i for i in live if not (isinstance(i, dict) and i.get("name") == name)]
    return live


def _union(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _union(out[key], value) if key in out else value
    return out


def apply(
    live: dict[str, Any] | None,
    applied: dict[str, Any],
    *,
    manager: str,
    now: str,
) -> dict[str, Any]:
    """The object after ``manager`` applies ``applied`` to ``live`` (None: create it).

    ``metadata.managedFields`` gets one Apply entry per manager; the entry's time changes only
    when the manager's field set does (so an identical second apply yields an equal object).
    """
    base = copy.deepcopy(live) if live is not None else {}
    entries = [dict(e) for e in (base.get("metadata") or {}).get("managedFields") or []]
    mine = next(
        (e for e in entries if e.get("manager") == manager and e.get("operation") == "Apply"), None
    )
    others: dict[str, Any] = {}
    for entry in entries:
        if entry is not mine:
            others = _union(others, entry.get("fieldsV1") or {})
    new_fields = fields_of(applied)
    result: dict[str, Any] = _apply_value(base, applied, None)
    if mine is not None:
        result = _prune(result, mine.get("fieldsV1") or {}, new_fields, others)
    entry = {
        "manager": manager,
        "operation": "Apply",
        "apiVersion": applied.get("apiVersion", ""),
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": new_fields,
    }
    if mine is not None and mine.get("fieldsV1") == new_fields:
        entry["time"] = mine.get("time", now)
    entries = (
        [entry if e is mine else e for e in entries] if mine is not None else [*entries, entry]
    )
    metadata = dict(result.get("metadata") or {})
    metadata["managedFields"] = entries
    result["metadata"] = metadata
    return result
