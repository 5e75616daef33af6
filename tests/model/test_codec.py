"""Codec: every kind round-trips; the body must match its key; garbage only ever raises
RecordError (checked with a few hundred seeded random and mutated inputs)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from meshcore.model import (
    MAX_VALUE_BYTES,
    Identity,
    Kind,
    Record,
    RecordError,
    decode_record,
    encode_record,
)
from tests.model.samples import SAMPLES


@pytest.mark.parametrize("kind", list(Kind), ids=[k.value for k in Kind])
def test_round_trip(kind: Kind) -> None:
    record = SAMPLES[kind]
    value = encode_record(record)
    decoded = decode_record(record.key(), value)
    assert decoded == record
    assert type(decoded) is type(record)
    assert encode_record(decoded) == value


@pytest.mark.parametrize("kind", list(Kind), ids=[k.value for k in Kind])
def test_encoding_is_compact_sorted_json(kind: Kind) -> None:
    value = encode_record(SAMPLES[kind])
    body = json.loads(value)
    assert list(body) == sorted(body)
    assert value == json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def test_encoding_is_independent_of_label_order() -> None:
    one = Identity(cell="east", id=0x070001, labels={"a": "1", "b": "2"})
    two = Identity(cell="east", id=0x070001, labels={"b": "2", "a": "1"})
    assert encode_record(one) == encode_record(two)


def test_service_encodes_global_by_alias() -> None:
    body = json.loads(encode_record(SAMPLES[Kind.SERVICE]))
    assert body["global"] is True
    assert "global_" not in body


def body_of(kind: Kind, **changes: Any) -> bytes:
    body = json.loads(encode_record(SAMPLES[kind]))
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        pytest.param(
            "cellmesh/v1/cells/west", body_of(Kind.CELL), "cell in key is 'west'", id="cell-name"
        ),
        pytest.param(
            "cellmesh/v1/heartbeat/west",
            body_of(Kind.HEARTBEAT),
            "cell in key is 'west' but the body says 'east'",
            id="heartbeat-cell",
        ),
        pytest.param(
            "cellmesh/v1/peers/east/north", body_of(Kind.PEER), "peer in key is 'north'", id="peer"
        ),
        pytest.param(
            "cellmesh/v1/nodes/west/node-1.east.internal",
            body_of(Kind.NODE),
            "cell in key",
            id="node-cell",
        ),
        pytest.param(
            "cellmesh/v1/nodes/east/node-2", body_of(Kind.NODE), "node in key", id="node-name"
        ),
        pytest.param(
            "cellmesh/v1/services/west/shop/cart",
            body_of(Kind.SERVICE),
            "cell in key",
            id="service-cell",
        ),
        pytest.param(
            "cellmesh/v1/services/east/prod/cart",
            body_of(Kind.SERVICE),
            "namespace in key is 'prod'",
            id="service-namespace",
        ),
        pytest.param(
            "cellmesh/v1/services/east/shop/basket",
            body_of(Kind.SERVICE),
            "name in key is 'basket'",
            id="service-name",
        ),
        pytest.param(
            "cellmesh/v1/endpoints/east/shop/basket/fd00:7::1:5",
            body_of(Kind.ENDPOINT),
            "service in key is 'basket'",
            id="endpoint-service",
        ),
        pytest.param(
            "cellmesh/v1/endpoints/east/shop/cart/fd00:7::1:6",
            body_of(Kind.ENDPOINT),
            "address in key",
            id="endpoint-address",
        ),
        pytest.param(
            "cellmesh/v1/endpoints/east/shop/cart/FD00:7::1:5",
            body_of(Kind.ENDPOINT),
            "address in key is 'FD00:7::1:5'",
            id="endpoint-address-not-canonical",
        ),
        pytest.param(
            "cellmesh/v1/identities/east/1", body_of(Kind.IDENTITY), "id in key is '1'", id="id"
        ),
        pytest.param(
            "cellmesh/v1/ipidentities/east/10.7.1.6",
            body_of(Kind.IP_IDENTITY),
            "ip in key",
            id="ip-identity",
        ),
        pytest.param(
            "cellmesh/v1/synced/east/services",
            body_of(Kind.SYNCED),
            "kind in key is 'services' but the body says 'endpoints'",
            id="canary-kind",
        ),
        pytest.param(
            "cellmesh/v1/services/east/shop/cart/extra",
            body_of(Kind.SERVICE),
            "has the form",
            id="key-too-long",
        ),
    ],
)
def test_key_body_mismatch(key: str, value: bytes, reason: str) -> None:
    with pytest.raises(RecordError, match=reason) as info:
        decode_record(key, value)
    assert info.value.key == key


SERVICE_KEY = SAMPLES[Kind.SERVICE].key()
ENDPOINT_KEY = SAMPLES[Kind.ENDPOINT].key()


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        pytest.param("cellmesh/v1/pods/east/x", b"{}", "unknown record kind", id="unknown-kind"),
        pytest.param("somewhere/else", b"{}", "does not start with", id="foreign-key"),
        pytest.param(SERVICE_KEY, b"", "Invalid JSON", id="empty"),
        pytest.param(SERVICE_KEY, b"{", "Invalid JSON", id="truncated"),
        pytest.param(SERVICE_KEY, b"\xff\xfe{}", "Invalid JSON", id="not-utf8"),
        pytest.param(SERVICE_KEY, b"[1, 2]", "not a JSON object", id="list"),
        pytest.param(SERVICE_KEY, b'"cart"', "not a JSON object", id="string"),
        pytest.param(SERVICE_KEY, b"null", "not a JSON object", id="null"),
        pytest.param(SERVICE_KEY, b"[" * 10_000, "Invalid JSON", id="deep-nesting"),
        pytest.param(SERVICE_KEY, b"{}", "Field required", id="empty-object"),
        pytest.param(
            SERVICE_KEY, body_of(Kind.SERVICE, cell="East"), "cell: 'East'", id="bad-cell"
        ),
        pytest.param(
            SERVICE_KEY, body_of(Kind.NODE), "Field required", id="node-body-at-service-key"
        ),
        pytest.param(
            SERVICE_KEY,
            body_of(Kind.SERVICE, frontends=[{"vip": "10.96.0.1", "port": "80"}]),
            r"frontends\[0\].port: Input should be a valid integer",
            id="strict-port-string",
        ),
        pytest.param(
            SERVICE_KEY,
            body_of(Kind.SERVICE, frontends=[{"vip": "10.96.0.1", "port": 80.0}]),
            r"frontends\[0\].port",
            id="strict-port-float",
        ),
        pytest.param(
            SERVICE_KEY,
            body_of(Kind.SERVICE, **{"global": "true"}),
            "global: Input should be a valid boolean",
            id="strict-bool-string",
        ),
        pytest.param(ENDPOINT_KEY, body_of(Kind.ENDPOINT, ready=1), "ready", id="strict-bool-int"),
        pytest.param(
            ENDPOINT_KEY,
            body_of(Kind.ENDPOINT, updated_at=None),
            "updated_at",
            id="null-for-default",
        ),
        pytest.param(
            ENDPOINT_KEY,
            body_of(Kind.ENDPOINT).replace(b'"updated_at": 1700000001.5', b'"updated_at": NaN'),
            "updated_at: .*finite",
            id="nan",
        ),
        pytest.param(
            "cellmesh/v1/cells/east",
            body_of(Kind.CELL, id=300, pod_cidrs=[]),
            r"id: .* \(and 1 more\)",
            id="counts-further-errors",
        ),
        pytest.param(
            SERVICE_KEY,
            b'{"x":"' + b"a" * MAX_VALUE_BYTES + b'"}',
            "over 1 MiB",
            id="too-big",
        ),
    ],
)
def test_decode_rejects(key: str, value: bytes, reason: str) -> None:
    with pytest.raises(RecordError, match=reason) as info:
        decode_record(key, value)
    assert info.value.key == key
    assert str(info.value).startswith(f"bad record at {key[:100]}")


def test_decode_ignores_unknown_fields() -> None:
    value = body_of(Kind.ENDPOINT, zone="eu-1", weights={"a": [1, 2]})
    assert decode_record(ENDPOINT_KEY, value) == SAMPLES[Kind.ENDPOINT]


def test_decode_uses_defaults_for_missing_optional_fields() -> None:
    value = (
        b'{"cell":"east","namespace":"shop","service":"cart","address":"10.7.0.5",'
        b'"ports":[{"port":80}]}'
    )
    record = decode_record("cellmesh/v1/endpoints/east/shop/cart/10.7.0.5", value)
    assert record.model_dump(include={"node", "ready", "serving", "terminating", "updated_at"}) == {
        "node": "",
        "ready": True,
        "serving": True,
        "terminating": False,
        "updated_at": 0.0,
    }


def test_encode_rejects_too_big_records() -> None:
    record = Identity(cell="east", id=0x070001, labels={"big": "x" * MAX_VALUE_BYTES})
    with pytest.raises(RecordError, match="over 1 MiB"):
        encode_record(record)


# --- fuzz: decode_record raises only RecordError, and anything accepted belongs at its key ---

VALID = [(record.key(), encode_record(record)) for record in SAMPLES.values()]
TOKENS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b",",
    b":",
    b"null",
    b"true",
    b"1e999",
    b"-0",
    b"\\u0000",
    b"\\ud800",
    b'"cell"',
    b'"east"',
    b"NaN",
    b"\x00",
    b"\xc3",
    b"99999999999999999999999",
]


def mutate(rng: random.Random, value: bytes) -> bytes:
    data = bytearray(value)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(4)
        at = rng.randrange(len(data) + 1)
        if choice == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif choice == 1:
            data[at:at] = rng.choice(TOKENS)
        elif choice == 2:
            del data[at : at + rng.randint(1, 8)]
        else:
            data = data[:at]
    return bytes(data)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.randrange(8 if depth < 3 else 5)
    scalars: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "east", "10.0.0.1", "fd00::1"]
    if roll < 5:
        return rng.choice(scalars)
    if roll < 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    fields = ["cell", "name", "id", "ports", "port", "address", "labels", "kind", "global"]
    return {rng.choice(fields): random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def fuzz_cases() -> list[tuple[str, bytes]]:
    rng = random.Random(20240611)
    cases: list[tuple[str, bytes]] = []
    for _ in range(300):
        key, value = rng.choice(VALID)
        cases.append((key, mutate(rng, value)))
    for _ in range(150):
        key, _value = rng.choice(VALID)
        cases.append((key, bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))))
    for _ in range(150):
        key, value = rng.choice(VALID)
        body = json.loads(value)
        body[rng.choice(list(body))] = random_json(rng)
        cases.append((key, json.dumps(body).encode()))
    for _ in range(50):
        key, value = rng.choice(VALID)
        cases.append((mutate(rng, key.encode()).decode("utf-8", "replace"), value))
    return cases


def test_fuzz_decode_raises_only_record_error() -> None:
    """Anything but ``RecordError`` propagates and fails the test."""
    errors: list[tuple[str, RecordError]] = []
    accepted: list[tuple[str, Record]] = []
    for key, value in fuzz_cases():
        try:
            accepted.append((key, decode_record(key, value)))
        except RecordError as e:
            errors.append((key, e))
    assert all(e.key == key and e.reason for key, e in errors)
    assert all(record.key() == key for key, record in accepted)
    assert len(errors) > 500  # the inputs are mostly garbage, and some survive mutation
    assert len(errors) + len(accepted) == 650
