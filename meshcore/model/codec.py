"""Bytes <-> records: the value format of every key under ``cellmesh/v1/``.

FROZEN WIRE CONTRACT: values are compact UTF-8 JSON objects with sorted keys, fields by alias
(``"global"``). ``encode_record`` is deterministic, so a writer can skip a put whose bytes did not
change. ``decode_record`` is the single gate for untrusted bytes (a peer's etcd, via its
meshapi): it picks the model from the key, validates strictly (no ``"80"`` for 80, no ``1`` for
``true``), and requires the body to belong at the key. Whatever the input, it returns a record or
raises ``RecordError`` -- never anything else -- so a watcher can drop and count the record.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from meshcore.model.errors import RecordError
from meshcore.model.keys import KEY_SEGMENTS, kind_of_key, parse_key
from meshcore.model.records import RECORD_TYPES, Record

__all__ = [
    "MAX_VALUE_BYTES",
    "decode_record",
    "encode_record",
    "format_validation_error",
    "loc_path",
]

MAX_VALUE_BYTES = 1 << 20
"""Largest value accepted (1 MiB); etcd refuses requests above 1.5 MiB anyway."""


def encode_record(record: Record) -> bytes:
    """Compact, deterministic JSON (sorted keys, by alias) of ``record``."""
    try:
        text = json.dumps(
            record.model_dump(mode="json", by_alias=True),
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
        )
    except ValueError as e:  # only a record built with model_construct() can get here
        raise RecordError(record.key(), f"cannot encode: {e}") from e
    value = text.encode()
    if len(value) > MAX_VALUE_BYTES:
        raise RecordError(record.key(), f"encoded record is {len(value)} bytes, over 1 MiB")
    return value


def decode_record(key: str, value: bytes) -> Record:
    """Parse and validate the record stored at ``key``; ``RecordError`` for anything wrong."""
    kind = kind_of_key(key)
    if len(value) > MAX_VALUE_BYTES:
        raise RecordError(key, f"value is {len(value)} bytes, over 1 MiB")
    try:
        record: Record = RECORD_TYPES[kind].model_validate_json(value, strict=True)
    except ValidationError as e:
        raise RecordError(key, format_validation_error(e)) from None
    expected = record.key()
    if expected != key:
        raise RecordError(key, _mismatch(key, expected))
    return record


def format_validation_error(error: ValidationError) -> str:
    """The first error as ``<field path>: <message>``, with a count of the others."""
    errors = error.errors(include_url=False, include_input=False)
    if not errors:  # pragma: no cover - pydantic always reports at least one
        return "invalid record"
    reason = _describe(errors[0])
    if len(errors) > 1:
        reason += f" (and {len(errors) - 1} more)"
    return reason


def _describe(detail: ErrorDetails) -> str:
    message = detail["msg"].removeprefix("Value error, ")
    if detail["type"] == "json_invalid":
        return message[:200]
    if detail["type"] == "model_type":
        return "body is not a JSON object"
    path = loc_path(detail["loc"])
    return f"{path}: {message}" if path else message


def loc_path(loc: Sequence[int | str]) -> str:
    """``("frontends", 1, "port")`` -> ``frontends[1].port``."""
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for an invalid mapping key
            out += " (key)"
        elif isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}" if out else part
        else:
            out += f"[{part[:40]!r}]"
    return out


def _mismatch(key: str, expected: str) -> str:
    """Name the first segment where the key and the body disagree."""
    try:
        got = parse_key(key)
    except RecordError as e:
        return e.reason
    want = parse_key(expected)
    names = KEY_SEGMENTS[want.kind]
    for name, have, need in zip(names, (got.cell, *got.rest), (want.cell, *want.rest), strict=True):
        if have != need:
            return f"{name} in key is {have[:64]!r} but the body says {need[:64]!r}"
    return f"key does not match the body (expected {expected[:200]!r})"  # pragma: no cover
