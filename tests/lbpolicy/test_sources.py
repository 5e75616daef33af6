"""`cell_source`: what one cell contributes to a service, the one rule of the agent and explain."""

from __future__ import annotations

from typing import get_args

import pytest

from meshcore.lbpolicy import DROPPED_STATES, STALE_STATE, CellSource, ServiceRef, cell_source
from meshcore.model import Affinity, Endpoint, EndpointPort, Frontend, Service
from meshcore.model.agentstatus import PeerStateName
from nodeagent.peers import PeerState

REF = ServiceRef("shop", "cart")
SERVICE = Service(
    cell="east",
    namespace=REF.namespace,
    name=REF.name,
    frontends=[Frontend(vip="10.96.0.10", port=80)],
    global_=True,
    shared=True,
    affinity=Affinity.NONE,
)
ENDPOINTS = {
    "10.2.0.1": Endpoint(
        cell="east",
        namespace=REF.namespace,
        service=REF.name,
        address="10.2.0.1",
        ports=[EndpointPort(port=8080)],
    )
}


def contribution(state: str, cell_id: int | None = 2) -> CellSource | None:
    return cell_source(
        cell="east",
        cell_id=cell_id,
        local=False,
        state=state,
        service=SERVICE,
        endpoints=ENDPOINTS,
    )


@pytest.mark.parametrize(
    ("state", "stale"),
    [
        pytest.param(PeerState.CONNECTING, False, id="connecting"),
        pytest.param(PeerState.SYNCING, False, id="syncing"),
        pytest.param(PeerState.READY, False, id="ready"),
        pytest.param(PeerState.STALE, True, id="stale-kept-marked"),
        pytest.param("local", False, id="explain-local"),
        pytest.param("unknown", False, id="explain-no-report"),
    ],
)
def test_a_live_cell_contributes_its_records(state: str, stale: bool) -> None:
    assert contribution(state) == CellSource(
        cell="east", cell_id=2, local=False, service=SERVICE, endpoints=ENDPOINTS, stale=stale
    )


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(PeerState.REVOKED, id="revoked"),
        pytest.param(PeerState.DISCONNECTED, id="disconnected"),
        pytest.param("revoked", id="revoked-as-reported"),
    ],
)
def test_a_dropped_cell_contributes_nothing(state: str) -> None:
    assert contribution(state) is None


def test_a_cell_whose_config_is_unknown_contributes_nothing() -> None:
    assert contribution(PeerState.READY, cell_id=None) is None


def test_the_rule_speaks_the_agents_state_names() -> None:
    """The agent's `PeerState`, the reported `PeerStateName` and the rule's names agree."""
    assert {s.value for s in PeerState} == set(get_args(PeerStateName))
    assert {PeerState.REVOKED, PeerState.DISCONNECTED} == DROPPED_STATES
    assert STALE_STATE == PeerState.STALE
