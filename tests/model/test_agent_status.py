"""``AgentStatus``: a valid report round-trips; bad fields are refused naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshcore.model import (
    AgentStatus,
    Kind,
    RecordError,
    agent_key,
    decode_record,
    encode_record,
    parse_key,
)
from tests.model.samples import SAMPLES

STATUS = SAMPLES[Kind.AGENT]
assert isinstance(STATUS, AgentStatus)


def body(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(encode_record(STATUS))
    data.update(changes)
    return data


def peer(n: int, **changes: Any) -> dict[str, Any]:
    data = body()
    data["peers"][n].update(changes)
    return data


def test_key_and_round_trip() -> None:
    assert STATUS.key() == "cellmesh/v1/agents/east/node-1.east.internal"
    assert STATUS.key() == agent_key("east", "node-1.east.internal")
    parts = parse_key(STATUS.key())
    assert (parts.kind, parts.cell, parts.rest) == (Kind.AGENT, "east", ("node-1.east.internal",))
    assert decode_record(STATUS.key(), encode_record(STATUS)) == STATUS
    assert STATUS.report_of("west") is not None
    assert STATUS.report_of("north") is None


def test_unknown_fields_and_kinds_are_kept_compatible() -> None:
    """A newer agent may add fields and count newer kinds; an older reader keeps the record."""
    data = peer(0, counts={"nodes": 1, "futurekind": 3}, newfield=1)
    data["newtop"] = {"x": 1}
    record = decode_record(STATUS.key(), json.dumps(data).encode())
    assert isinstance(record, AgentStatus)
    assert record.peers[0].counts == {"nodes": 1, "futurekind": 3}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(peer(1, state="lost"), "peers[1].state: Input should be", id="bad-state"),
        pytest.param(
            peer(1, error_class="disk"), "peers[1].error_class: Input should be", id="bad-class"
        ),
        pytest.param(
            peer(1, last_error="e" * 513),
            "peers[1].last_error: String should have at most 512 characters",
            id="error-too-long",
        ),
        pytest.param(peer(0, revision=-1), "peers[0].revision: Input should be greater", id="rev"),
        pytest.param(
            peer(0, counts={"nodes": -2}), "peers[0].counts.nodes: Input should be greater", id="n"
        ),
        pytest.param(
            peer(0, counts={"No Kind": 1}), "peers[0].counts['No Kind'] (key)", id="count-key"
        ),
        pytest.param(
            peer(0, heartbeat_age=-1.0), "peers[0].heartbeat_age: Input should be greater", id="age"
        ),
        pytest.param(peer(0, cell_id=256), "peers[0].cell_id: Input should be less", id="cell-id"),
        pytest.param(
            peer(0, local=False), "cell 'east' has local=False, but the agent's own", id="local"
        ),
        pytest.param(
            peer(1, local=True), "cell 'west' has local=True, but the agent's own", id="not-local"
        ),
        pytest.param(peer(1, cell="east", local=True), "'east' is reported twice", id="twice"),
        pytest.param(body(ready="yes"), "ready: Input should be a valid boolean", id="ready-str"),
        pytest.param(body(updated_at=-5), "updated_at: Input should be greater", id="timestamp"),
        pytest.param(body(backends=-1), "backends: Input should be greater", id="backends"),
        pytest.param(body(peers={}), "peers: Input should be a valid array", id="peers-not-list"),
        pytest.param(body(node="Node_1"), "node: 'Node_1' is not a valid DNS-1123", id="node"),
        pytest.param(body(node="node-2"), "node in key is 'node-1.east.internal'", id="key"),
    ],
)
def test_bad_fields_are_refused(data: dict[str, Any], reason: str) -> None:
    with pytest.raises(RecordError) as info:
        decode_record(STATUS.key(), json.dumps(data).encode())
    assert reason in info.value.reason, info.value.reason
    assert info.value.key == STATUS.key()
