"""``meshctl status`` after the cell's etcd was wiped: the services and peers only an operator had
written are reported lost (table and ``-o json``) with the command that restores each; after
``meshctl apply -f`` and the peer's restore, nothing is lost any more.

The ``mesh`` fixture (tests/nodeagent/conftest.py): alpha and beta, each a real etcd and meshapi,
connected both ways, each with the global service demo/echo written by its admin.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from certs import Role
from meshctl.cli import cli
from meshctl.contexts import Context, add_context
from tests.conftest import Pki, wait_for
from tests.meshapi.helpers import peer
from tests.nodeagent.conftest import Mesh
from tests.nodeagent.conftest import mesh as mesh  # the two-cell fixture, re-exported here

ECHO_MANIFEST = """\
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: demo
  annotations:
    service.cilium.io/global: "true"
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}]
"""


@pytest.fixture
def config(pki: Pki, mesh: Mesh, tmp_path: Path) -> Path:
    path = tmp_path / "meshctl.json"
    add_context(path, Context("alpha", mesh.alpha.address, pki.tls("alpha", Role.ADMIN)), use=True)
    return path


async def run(config: Path, *args: str) -> Result:
    argv = ["--config", str(config), *args]
    env: dict[str, str | None] = {"MESHCTL_CONTEXT": None, "MESHCTL_CONFIG": None}
    return await asyncio.to_thread(CliRunner().invoke, cli, argv, env=env)


async def status_json(config: Path) -> dict[str, Any]:
    result = await run(config, "status", "-o", "json")
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


async def test_status_reports_lost_state_with_the_restoring_command(
    config: Path, mesh: Mesh, tmp_path: Path
) -> None:
    alpha = mesh.alpha.app
    assert alpha is not None
    epoch = alpha.cache.epoch
    await mesh.alpha.wipe_etcd()
    await wait_for(
        lambda: alpha.cache.epoch != epoch and len(alpha.recovery.core.lost()) == 2,
        timeout=20,
        what="the wipe noticed, two records lost",
    )

    doc = await status_json(config)
    lost = {r["name"]: r for r in doc["recovery"]["lost"]}
    assert doc["meshapi"]["reachable"] is True, doc["problems"]
    assert doc["recovery"]["recovering"] is True
    assert set(lost) == {"demo/echo", "beta"}
    assert lost["demo/echo"]["kind"] == "services"
    assert lost["demo/echo"]["restore"] == (
        "meshctl --context alpha apply -f <the manifest of demo/echo>"
    )
    assert lost["beta"]["restore"] == "meshctl connect --context alpha --destination-context beta"
    assert 0 < lost["beta"]["grace_left"] <= 900
    assert {"services", "peers"} <= set(doc["recovery"]["withheld"])
    assert doc["ready"] is False
    assert any(p.startswith("lost in an etcd wipe: peers beta") for p in doc["problems"])

    table = await run(config, "status")
    assert "Lost:    2 record(s) lost in an etcd wipe" in table.stdout, table.stdout
    assert "RESTORE WITH" in table.stdout
    assert "meshctl connect --context alpha --destination-context beta" in table.stdout

    manifest = tmp_path / "echo.yaml"
    manifest.write_text(ECHO_MANIFEST)
    applied = await run(config, "apply", "-f", str(manifest))
    assert applied.exit_code == 0, applied.output
    # The peer as `meshctl connect` writes it (connect also needs beta's context and preflight).
    await mesh.alpha.write(
        puts=[peer("alpha", "beta", id_=mesh.beta.id, address=mesh.beta.address)]
    )
    await wait_for(lambda: not alpha.recovery.core.lost(), timeout=20, what="nothing lost")

    doc = await status_json(config)
    assert doc["recovery"]["lost"] == []
    # (The fixture's admin-written endpoints name a node no agent registers: their canary waits
    # for the resync grace, which is no operator's business and not reported as lost.)
    assert not {"services", "peers"} & set(doc["recovery"]["withheld"])
    assert not any("lost" in p for p in doc["problems"])
    table = await run(config, "status")
    assert "Lost:" not in table.stdout
