"""``meshctl status [--wait]`` of a real two-cell mesh with a running agent (its status reports).

The ``mesh`` fixture (tests/nodeagent/conftest.py): alpha and beta, each a real etcd and meshapi,
connected both ways. The agent of alpha runs in process (`AgentApp` over `FakeLbMaps`) and
publishes its `AgentStatus`; meshctl runs in a worker thread with alpha's admin context.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bpf.fakemaps import FakeLbMaps
from certs import Role
from meshcore.client import MeshClient
from meshcore.model import AgentStatus, PeerReport
from meshctl.cli import cli
from meshctl.contexts import Context, add_context
from meshctl.status_commands import parse_duration
from nodeagent.app import AgentApp
from tests.conftest import Pki
from tests.nodeagent.conftest import ALPHA_ENDPOINTS, BETA_ENDPOINTS, Mesh, agent_config
from tests.nodeagent.conftest import mesh as mesh  # the two-cell fixture, re-exported here


@pytest.fixture
def config(pki: Pki, mesh: Mesh, tmp_path: Path) -> Path:
    path = tmp_path / "meshctl.json"
    add_context(path, Context("alpha", mesh.alpha.address, pki.tls("alpha", Role.ADMIN)), use=True)
    return path


@pytest.fixture
async def agent(pki: Pki, mesh: Mesh) -> AsyncIterator[AgentApp]:
    app = AgentApp(agent_config(pki, mesh), http="127.0.0.1:0", maps=FakeLbMaps())
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def run(config: Path, *args: str) -> Result:
    argv = ["--config", str(config), *args]
    env: dict[str, str | None] = {"MESHCTL_CONTEXT": None, "MESHCTL_CONFIG": None}
    return await asyncio.to_thread(CliRunner().invoke, cli, argv, env=env)


async def test_wait_then_json_of_a_healthy_mesh(config: Path, mesh: Mesh, agent: AgentApp) -> None:
    started = time.monotonic()
    waited = await run(config, "status", "--wait", "--wait-duration", "60s", "-o", "json")
    assert waited.exit_code == 0, waited.output
    assert time.monotonic() - started < 15
    doc: dict[str, Any] = json.loads(waited.stdout)

    assert doc["schema"] == "cellmesh.status/v1"
    assert (doc["context"], doc["server"]) == ("alpha", mesh.alpha.address)
    assert (doc["ready"], doc["problems"]) == (True, [])
    api = doc["meshapi"]
    assert (api["reachable"], api["error"], api["cell"], api["cell_id"]) == (True, None, "alpha", 1)
    assert api["revision"] > 0
    assert 0 <= api["heartbeat_age"] < 5
    assert doc["peers"] == [
        {
            "name": "beta",
            "id": 2,
            "address": mesh.beta.address,
            "tls_server_name": None,
            "watch": True,
            "export": True,
        }
    ]
    [a1] = doc["agents"]
    assert {k: a1[k] for k in ("node", "reporting", "ready", "reason", "services")} == {
        "node": "a1",
        "reporting": True,
        "ready": True,
        "reason": "ready",
        "services": 1,
    }
    assert a1["backends"] == len(ALPHA_ENDPOINTS) + len(BETA_ENDPOINTS)
    assert 0 <= a1["report_age"] < 10
    own, beta = a1["peers"]
    assert (own["cell"], own["local"], own["connected"], own["state"]) == (
        "alpha",
        True,
        True,
        "ready",
    )
    assert (beta["cell"], beta["cell_id"], beta["local"], beta["connected"]) == (
        "beta",
        2,
        False,
        True,
    )
    assert (beta["state"], beta["synced"], beta["error_class"], beta["last_error"]) == (
        "ready",
        True,
        "",
        "",
    )
    assert beta["counts"] == {
        "nodes": 0,
        "endpoints": len(BETA_ENDPOINTS),
        "services": 1,
        "identities": 0,
    }
    assert beta["revision"] > 0
    assert beta["heartbeat_age"] is not None

    table = await run(config, "status")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"Cell:    alpha (id 1) at {mesh.alpha.address}: reachable")
    assert lines[1] == f"Peers:   beta (id 2, {mesh.beta.address})"
    assert lines[2] == "Agents:  1, 1 reporting, 1 ready"
    rows = {tuple(line.split()[:4]) for line in lines[4:7]}
    assert ("a1", "beta", "ready", "yes") in rows
    assert lines[-1] == "Status:  ready"


async def test_wait_fails_naming_the_reason_when_meshapi_is_down(config: Path, mesh: Mesh) -> None:
    await mesh.alpha.stop()
    started = time.monotonic()
    result = await run(config, "status", "--wait", "--wait-duration", "2s")
    assert time.monotonic() - started < 10
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "NOT REACHABLE" in result.stdout
    assert "cell not ready after 2s: cannot reach meshapi at" in result.stderr


async def test_without_agents_and_with_a_silent_agent(config: Path, pki: Pki, mesh: Mesh) -> None:
    result = await run(config, "status", "-o", "json")
    assert result.exit_code == 0, result.output  # reachable: not an error, only not ready
    doc = json.loads(result.stdout)
    assert doc["ready"] is False
    assert doc["problems"] == ["no agent of cell alpha reports yet"]

    silent = AgentStatus(
        cell="alpha",
        node="a9",
        updated_at=time.time() - 120,
        ready=True,
        peers=[PeerReport(cell="alpha", local=True, state="ready", synced=True)],
    )
    async with MeshClient(mesh.alpha.address, pki.tls("alpha", Role.AGENT, node="a9")) as client:
        await client.write(puts=[silent])
    result = await run(config, "status", "--wait", "--wait-duration", "1500ms")
    assert result.exit_code == 1, result.output
    assert "a9" in result.stdout
    assert "(not reporting)" in result.stdout
    assert "agent a9: not reporting (last report 12" in result.stderr


async def test_agent_that_does_not_see_a_peer_is_not_ready(
    config: Path, pki: Pki, mesh: Mesh
) -> None:
    lonely = AgentStatus(
        cell="alpha",
        node="a2",
        updated_at=time.time(),
        ready=False,
        reason="peer beta not synced (connecting)",
        peers=[
            PeerReport(cell="alpha", local=True, state="ready", synced=True),
            PeerReport(
                cell="beta",
                state="connecting",
                synced=False,
                last_error="127.0.0.1:1: UNAVAILABLE: failed to connect",
                error_class="tcp",
            ),
        ],
    )
    async with MeshClient(mesh.alpha.address, pki.tls("alpha", Role.AGENT, node="a2")) as client:
        await client.write(puts=[lonely])
    result = await run(config, "status", "-o", "json")
    doc = json.loads(result.stdout)
    assert doc["problems"] == [
        "agent a2: not ready (peer beta not synced (connecting))",
        "agent a2: cell beta is connecting (tcp: 127.0.0.1:1: UNAVAILABLE: failed to connect)",
    ]


async def test_bad_duration_is_a_usage_error(config: Path) -> None:
    result = await run(config, "status", "--wait", "--wait-duration", "soon")
    assert result.exit_code == 2
    assert "'soon' is not a duration (examples: 30s, 2m, 1m30s)" in result.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("2m", 120.0), ("1m30s", 90.0), ("1h", 3600.0), ("250ms", 0.25),
     ("1.5s", 1.5), ("45", 45.0), ("0", 0.0)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "5x", "1m 30s", "-5s", "30s2", "inf", "nan"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
