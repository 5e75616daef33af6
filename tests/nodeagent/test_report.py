"""The agent's status report: built from its watchers, published through its own meshapi.

Real cells (etcd, meshapi, mTLS) from the ``mesh`` fixture; agents in process over `FakeLbMaps`.
The published record is read back from alpha's meshapi cache (what ``meshctl status`` lists).
"""

from __future__ import annotations

import time

import pytest

from bpf.fakemaps import FakeLbMaps
from meshcore.model import AgentStatus, agent_key
from nodeagent.agent import Agent
from nodeagent.app import AgentApp
from nodeagent.peers import PeerState
from nodeagent.report import build_status, state_signature
from tests.conftest import Pki, wait_for
from tests.nodeagent.conftest import (
    ALPHA_ENDPOINTS,
    BETA_ENDPOINTS,
    AgentFactory,
    Mesh,
    agent_config,
)


def ready(agent: Agent) -> bool:
    w = agent.watchers.get("beta")
    return agent.ready()[0] and w is not None and w.state is PeerState.READY


async def test_build_status_of_a_ready_agent(agent_factory: AgentFactory) -> None:
    agent = await agent_factory()
    await wait_for(lambda: ready(agent) and len(agent.maps.landed.backends) == 4, what="ready")
    status = build_status(agent, wall_clock=lambda: 1_700_000_000.0)
    assert (status.cell, status.node, status.updated_at) == ("alpha", "a1", 1_700_000_000.0)
    assert (status.ready, status.reason) == (True, "ready")
    assert (status.services, status.backends) == (1, len(ALPHA_ENDPOINTS) + len(BETA_ENDPOINTS))
    own, beta = status.report_of("alpha"), status.report_of("beta")
    assert own is not None
    assert beta is not None
    assert [r.cell for r in status.peers] == ["alpha", "beta"]
    assert (own.local, own.cell_id, own.state, own.synced) == (True, 1, "ready", True)
    assert (beta.local, beta.cell_id, beta.state, beta.synced) == (False, 2, "ready", True)
    assert beta.counts["endpoints"] == len(BETA_ENDPOINTS)
    assert own.counts["peers"] == 1
    assert "peers" not in beta.counts
    assert beta.revision > 0
    assert beta.heartbeat_age is not None
    assert (beta.error_class, beta.last_error) == ("", "")


async def test_long_errors_are_cut(agent_factory: AgentFactory) -> None:
    agent = await agent_factory()
    await wait_for(lambda: ready(agent), what="ready")
    agent.watchers["beta"].last_error = "x" * 5000
    report = build_status(agent).report_of("beta")
    assert report is not None
    assert len(report.last_error) == 512
    assert report.last_error.endswith("...")


@pytest.fixture
async def app(pki: Pki, mesh: Mesh) -> AgentApp:
    return AgentApp(
        agent_config(pki, mesh), http="127.0.0.1:0", maps=FakeLbMaps(), status_interval=30.0
    )


def published(mesh: Mesh) -> AgentStatus | None:
    assert mesh.alpha.app is not None
    item = mesh.alpha.app.cache.full.get(agent_key("alpha", "a1"))
    return item.record if item is not None and isinstance(item.record, AgentStatus) else None


def peer_state(mesh: Mesh, cell: str) -> str | None:
    status = published(mesh)
    report = status.report_of(cell) if status is not None else None
    return report.state if report is not None else None


async def test_app_publishes_and_reports_state_changes_promptly(app: AgentApp, mesh: Mesh) -> None:
    await app.start()
    try:
        await wait_for(
            lambda: (
                (s := published(mesh)) is not None
                and s.ready
                and peer_state(mesh, "beta") == "ready"
            ),
            what="a ready report",
        )
        status = published(mesh)
        assert status is not None
        assert abs(status.updated_at - time.time()) < 10

        agent = app.agent
        assert agent is not None
        await mesh.beta.stop()
        await wait_for(lambda: agent.watchers["beta"].state is PeerState.STALE, what="stale")
        changed = time.monotonic()
        # The periodic interval is 30 s: only the prompt path can publish this in time.
        await wait_for(lambda: peer_state(mesh, "beta") == "stale", timeout=5, what="report")
        assert time.monotonic() - changed < 1.0
    finally:
        await app.stop()


async def test_publishing_failures_are_retried_not_fatal(app: AgentApp, mesh: Mesh) -> None:
    await mesh.alpha.stop()  # the agent's own meshapi is down from the start
    await app.start()
    try:
        assert app.publisher is not None
        publisher = app.publisher
        await wait_for(lambda: publisher.stats.failures >= 2, what="failed attempts")
        assert publisher.stats.last_error
        assert app.agent is not None
        assert app.agent.own.state is PeerState.CONNECTING

        await mesh.alpha.start()
        await wait_for(lambda: published(mesh) is not None, timeout=20, what="a report")
        await wait_for(lambda: publisher.stats.last_error == "", what="recovery")
    finally:
        await app.stop()


async def test_signature_follows_peer_states(agent_factory: AgentFactory, mesh: Mesh) -> None:
    agent = await agent_factory()
    await wait_for(lambda: ready(agent), what="ready")
    before = state_signature(agent)
    assert before == (True, (("alpha", "ready", True), ("beta", "ready", True)))
    await mesh.beta.stop()
    await wait_for(lambda: state_signature(agent) != before, what="a new signature")
    assert ("beta", "stale", True) in state_signature(agent)[1]
