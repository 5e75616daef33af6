"""``meshctl explain service`` against two real meshapis (in process, real etcd and mTLS).

Cells alpha and beta are connected both ways; each scenario is a service of its own in
namespace ``demo``, so one mesh serves every case. The contexts are deliberately not named after
the cells ("one", "two"): explain finds a cell's context by asking each meshapi who it is. The
CLI calls ``asyncio.run``, so it runs in a worker thread while the meshapis serve on the test's
(module-scoped) event loop.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog
from click.testing import CliRunner, Result

from certs import Role
from meshapi.app import MeshApiApp, MeshApiConfig
from meshcore.client import MeshClient
from meshcore.lbpolicy import Reason, ServiceRef
from meshcore.localetcd import LocalEtcd
from meshcore.model import (
    AgentStatus,
    Endpoint,
    EndpointPort,
    Frontend,
    Node,
    Peer,
    PeerReport,
    Record,
    Service,
)
from meshcore.model.records import Affinity
from meshctl.contexts import Context, add_context
from meshctl.explain_commands import CellView, explain_group, explain_service
from tests.conftest import CELL_CIDRS, CELL_IDS, Pki

pytestmark = pytest.mark.asyncio(loop_scope="module")


ACTIVE: Mapping[str, bool] = {}
UNREADY: Mapping[str, bool] = {"ready": False, "serving": False}
DRAINING: Mapping[str, bool] = {"ready": False, "serving": True, "terminating": True}


def service(cell: str, name: str, vip: int, **flags: Any) -> Service:
    return Service.model_validate(
        {
            "cell": cell,
            "namespace": "demo",
            "name": name,
            "frontends": [Frontend(name="http", vip=ip_address(f"10.96.1.{vip}"), port=80)],
            "global": flags.get("global_", True),
            "shared": flags.get("shared", True),
            "affinity": flags.get("affinity", Affinity.NONE),
        }
    )


def endpoint(
    cell: str, name: str, host: int, *, port_name: str = "http", state: Mapping[str, bool] = ACTIVE
) -> Endpoint:
    base = {"alpha": "10.1.0", "beta": "10.2.0"}[cell]
    return Endpoint(
        cell=cell,
        namespace="demo",
        service=name,
        address=ip_address(f"{base}.{host}"),
        node=f"{cell[0]}1",
        ports=[EndpointPort(name=port_name, port=8080)],
        **state,
    )


# name -> (alpha's service flags or None, beta's, alpha's endpoints, beta's endpoints)
Scenario = tuple[
    dict[str, Any] | None,
    dict[str, Any] | None,
    Sequence[Mapping[str, bool]],
    Sequence[Mapping[str, bool]],
]
SCENARIOS: dict[str, Scenario] = {
    "local-ready": ({"affinity": Affinity.LOCAL}, {}, [ACTIVE], [ACTIVE]),
    "local-unready": ({"affinity": Affinity.LOCAL}, {}, [UNREADY], [ACTIVE]),
    "remote": ({"affinity": Affinity.REMOTE}, {}, [ACTIVE], [ACTIVE]),
    "none": ({}, {}, [ACTIVE], [ACTIVE, ACTIVE]),
    "beta-unshared": ({}, {"shared": False}, [ACTIVE], [ACTIVE]),
    "alpha-unshared": ({"shared": False}, {}, [ACTIVE], [ACTIVE]),
    "alpha-not-global": ({"global_": False}, {}, [ACTIVE], [ACTIVE]),
    "beta-not-global": ({}, {"global_": False}, [ACTIVE], [ACTIVE]),
    "beta-missing": ({}, None, [ACTIVE], [ACTIVE]),
    "draining": ({}, {}, [ACTIVE, DRAINING, UNREADY], []),
    "all-draining": ({"affinity": Affinity.LOCAL}, {}, [DRAINING], [DRAINING]),
}


def scenario_records(cell: str) -> list[Record]:
    records: list[Record] = []
    for index, (name, (alpha, beta, alpha_eps, beta_eps)) in enumerate(SCENARIOS.items()):
        flags, states = (alpha, alpha_eps) if cell == "alpha" else (beta, beta_eps)
        if flags is not None:
            records.append(service(cell, name, index + 10, **flags))
        records += [endpoint(cell, name, n + 2, state=s) for n, s in enumerate(states)]
    # A backend whose only port does not serve the frontend ("http").
    records.append(service(cell, "ports", 99))
    records.append(endpoint(cell, "ports", 2, port_name="http" if cell == "alpha" else "grpc"))
    return records


@dataclass
class Cells:
    config: Path
    alpha_only: Path  # a contexts file without beta's context
    pki: Pki
    servers: dict[str, str]

    async def explain(self, *args: str, config: Path | None = None) -> Result:
        runner = CliRunner()
        argv = ["service", *args]
        # The root command's ContextSelection, as `meshctl --config ... explain ...` builds it.
        from meshctl.contexts import ContextSelection

        obj = ContextSelection(config or self.config)
        return await asyncio.to_thread(runner.invoke, explain_group, argv, obj=obj)

    async def explain_json(self, service: str, *args: str) -> dict[str, Any]:
        result = await self.explain(f"demo/{service}", "--node", "alpha/a1", "-o", "json", *args)
        assert result.exit_code == 0, result.output
        doc: dict[str, Any] = json.loads(result.stdout)
        return doc

    async def write(self, cell: str, records: Sequence[Record], *, role: Role = Role.ADMIN) -> None:
        tls = self.pki.tls(cell, role, node="a1" if role is Role.AGENT else None)
        async with MeshClient(self.servers[cell], tls) as client:
            await client.write(puts=records)


@pytest.fixture(scope="module", autouse=True)
def server_logs_to_stderr() -> Iterator[None]:
    """Keep the in-process meshapis' log lines out of what CliRunner captures as stdout."""
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    yield
    structlog.configure(**saved)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cells(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cells]:
    root = tmp_path_factory.mktemp("explain")
    etcds: list[LocalEtcd] = []
    apps: list[MeshApiApp] = []
    try:
        for name in ("alpha", "beta"):
            etcd = LocalEtcd(data_dir=root / name / "data")
            etcds.append(etcd)
            await asyncio.to_thread(etcd.start)
            pod, nodes = CELL_CIDRS[name]
            app = MeshApiApp(
                MeshApiConfig(
                    cell=name,
                    cell_id=CELL_IDS[name],
                    pod_cidrs=(ip_network(pod),),
                    node_cidrs=(ip_network(nodes),),
                    etcd_endpoints=(etcd.endpoint,),
                    listen="127.0.0.1:0",
                    tls_dir=pki.tls(name, Role.MESHAPI),
                    http="127.0.0.1:0",
                )
            )
            apps.append(app)
            await app.start()
            await app.wait_ready()
        servers = {app.config.cell: f"127.0.0.1:{app.grpc_port}" for app in apps}
        config, alpha_only = root / "meshctl.json", root / "alpha-only.json"
        for path, names in ((config, ("alpha", "beta")), (alpha_only, ("alpha",))):
            for context, cell in (("one", "alpha"), ("two", "beta")):
                if cell in names:
                    tls = pki.tls(cell, Role.ADMIN)
                    add_context(path, Context(context, servers[cell], tls))
        mesh = Cells(config, alpha_only, pki, servers)
        for cell, other in (("alpha", "beta"), ("beta", "alpha")):
            peer = Peer(cell=cell, name=other, id=CELL_IDS[other], address=servers[other])
            await mesh.write(cell, [peer, *scenario_records(cell)])
        await mesh.write(
            "alpha", [Node(cell="alpha", name="a1", addresses=[ip_address("192.168.1.10")])]
        )
        yield mesh
    finally:
        for app in apps:
            await app.stop()
        for etcd in etcds:
            await asyncio.to_thread(etcd.stop)
            shutil.rmtree(etcd.data_dir, ignore_errors=True)


A, B = "10.1.0", "10.2.0"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(
            "local-ready",
            {f"{A}.2": Reason.SELECTED, f"{B}.2": Reason.PREFERRED_LOCAL_ACTIVE},
            id="local-ready-local",
        ),
        pytest.param(
            "local-unready",
            {f"{A}.2": Reason.NOT_READY, f"{B}.2": Reason.SELECTED_SPILLOVER},
            id="local-no-ready-local",
        ),
        pytest.param(
            "remote",
            {f"{A}.2": Reason.PREFERRED_REMOTE_ACTIVE, f"{B}.2": Reason.SELECTED},
            id="remote",
        ),
        pytest.param(
            "none",
            {f"{A}.2": Reason.SELECTED, f"{B}.2": Reason.SELECTED, f"{B}.3": Reason.SELECTED},
            id="none",
        ),
        pytest.param(
            "beta-unshared",
            {f"{A}.2": Reason.SELECTED, f"{B}.2": Reason.REMOTE_NOT_SHARED},
            id="remote-shared-false",
        ),
        pytest.param(
            "alpha-unshared",
            {f"{A}.2": Reason.SELECTED, f"{B}.2": Reason.SELECTED},
            id="local-shared-false-consumes",
        ),
        pytest.param(
            "alpha-not-global",
            {f"{A}.2": Reason.SELECTED, f"{B}.2": Reason.LOCAL_NOT_GLOBAL},
            id="local-not-global",
        ),
        pytest.param(
            "beta-not-global",
            {f"{A}.2": Reason.SELECTED, f"{B}.2": Reason.REMOTE_NOT_GLOBAL},
            id="remote-not-global",
        ),
        pytest.param(
            "beta-missing",
            {f"{A}.2": Reason.SELECTED, f"{B}.2": Reason.REMOTE_NO_SERVICE},
            id="remote-no-service",
        ),
        pytest.param(
            "draining",
            {
                f"{A}.2": Reason.SELECTED,
                f"{A}.3": Reason.TERMINATING_UNUSED,
                f"{A}.4": Reason.NOT_READY,
            },
            id="terminating-and-unhealthy",
        ),
        pytest.param(
            "all-draining",
            {f"{A}.2": Reason.SELECTED_TERMINATING, f"{B}.2": Reason.PREFERRED_LOCAL_TERMINATING},
            id="only-terminating",
        ),
        pytest.param(
            "ports",
            {f"{A}.2": Reason.SELECTED, f"{B}.2": Reason.NO_MATCHING_PORT},
            id="no-matching-port",
        ),
    ],
)
async def test_reasons(cells: Cells, name: str, expected: dict[str, Reason]) -> None:
    doc = await cells.explain_json(name)
    [frontend] = doc["frontends"]
    assert frontend["frontend"] == "10.96.1.{}:80/TCP (http)".format(
        99 if name == "ports" else list(SCENARIOS).index(name) + 10
    )
    got = {row["address"]: row["reason"] for row in frontend["backends"]}
    assert got == {address: reason.value for address, reason in expected.items()}
    for row in frontend["backends"]:
        reason = Reason(row["reason"])
        assert row["description"] == reason.describe()
        assert row["selected"] is (reason.value.startswith("selected"))
        assert row["cell"] == ("alpha" if row["address"].startswith(A) else "beta")
    assert frontend["selected"] == sum(r["selected"] for r in frontend["backends"])


async def test_json_document(cells: Cells) -> None:
    doc = await cells.explain_json("local-unready")
    assert {k: v for k, v in doc.items() if k != "frontends"} == {
        "service": "demo/local-unready",
        "node": "alpha/a1",
        "cell": "alpha",
        "global": True,
        "shared": True,
        "affinity": "local",
        "peer_states": {"beta": "unknown"},
        "warnings": [],
        "notes": ["peer states unknown (no agent report)"],
    }
    assert doc["frontends"][0]["backends"][0] == {
        "cell": "alpha",
        "address": "10.1.0.2",
        "port": 8080,
        "protocol": "TCP",
        "state": "unhealthy",
        "stale": False,
        "selected": False,
        "reason": "not-ready",
        "description": Reason.NOT_READY.describe(),
    }


async def test_table(cells: Cells) -> None:
    result = await cells.explain("demo/local-ready", "--node", "alpha/a1")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "Service demo/local-ready as node alpha/a1 programs it "
        "(cell 'alpha': global, shared, affinity local)"
    )
    assert "Frontend 10.96.1.10:80/TCP (http): 1 of 2 endpoints selected" in lines
    header = lines.index("Frontend 10.96.1.10:80/TCP (http): 1 of 2 endpoints selected") + 1
    assert lines[header].split() == ["CELL", "ADDRESS", "PORT", "STATE", "SELECTED", "REASON"]
    assert lines[header + 1].split()[:5] == ["alpha", "10.1.0.2", "8080", "active", "yes"]
    assert lines[header + 1].endswith(Reason.SELECTED.describe())
    assert lines[header + 2].split()[:5] == ["beta", "10.2.0.2", "8080", "active", "no"]
    assert lines[header + 2].endswith(Reason.PREFERRED_LOCAL_ACTIVE.describe())
    assert lines[-1] == "note: peer states unknown (no agent report)"


async def test_peer_states_from_the_agent_report(cells: Cells) -> None:
    report = AgentStatus(
        cell="alpha",
        node="a1",
        updated_at=time.time(),
        ready=True,
        peers=[
            PeerReport(cell="alpha", local=True, state="ready", synced=True),
            PeerReport(cell="beta", state="stale", synced=True),
        ],
    )
    await cells.write("alpha", [report], role=Role.AGENT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (doc := await cells.explain_json("none"))["peer_states"] != {"beta": "stale"}:
        assert loop.time() < deadline, doc
        await asyncio.sleep(0.05)
    rows = doc["frontends"][0]["backends"]
    assert {(r["cell"], r["stale"], r["selected"]) for r in rows} == {
        ("alpha", False, True),
        ("beta", True, True),
    }
    assert "cell 'beta' is stale: its last-known-good backends are kept" in doc["notes"]


async def test_a_peer_without_context_is_reported_not_fatal(cells: Cells) -> None:
    result = await cells.explain(
        "demo/none", "--node", "alpha/a1", "-o", "json", config=cells.alpha_only
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {r["cell"] for r in doc["frontends"][0]["backends"]} == {"alpha"}
    assert any(
        n.startswith("cell 'beta': no reachable context for cell 'beta' in ") for n in doc["notes"]
    ), doc["notes"]


async def test_explicit_context(cells: Cells) -> None:
    doc = await cells.explain_json("remote", "--context", "one")
    assert {r["cell"] for r in doc["frontends"][0]["backends"]} == {"alpha", "beta"}
    wrong = await cells.explain("demo/remote", "--node", "alpha/a1", "--context", "two")
    assert wrong.exit_code == 1
    assert "context 'two' is cell 'beta', not 'alpha'" in wrong.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(
            ["demo", "--node", "alpha/a1"], 2, "service 'demo' is not NAMESPACE/NAME", id="ref"
        ),
        pytest.param(["demo/none", "--node", "a1"], 2, "--node 'a1' is not CELL/NODE", id="node"),
        pytest.param(
            ["demo/none", "--node", "gamma/c1"],
            1,
            "no reachable context for cell 'gamma'",
            id="cell",
        ),
        pytest.param(
            ["demo/nothing", "--node", "alpha/a1"],
            1,
            "service demo/nothing does not exist in cell 'alpha'",
            id="service",
        ),
        pytest.param(
            ["demo/none", "--node", "beta/zz"],
            0,
            "node 'zz' has no node record in cell 'beta'",
            id="node-unknown",
        ),
    ],
)
async def test_errors(cells: Cells, args: list[str], code: int, message: str) -> None:
    result = await cells.explain(*args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


# --- the pure core: states the mesh above does not reach --------------------------------


def views() -> dict[str, CellView]:
    return {
        cell: CellView(
            cell,
            CELL_IDS[cell],
            service(cell, "echo", 10),
            (endpoint(cell, "echo", 2),),
        )
        for cell in ("alpha", "beta")
    }


@pytest.mark.parametrize(
    ("state", "reason", "note"),
    [
        pytest.param("ready", "selected", None, id="ready"),
        pytest.param(
            "syncing",
            "selected",
            "cell 'beta' is syncing: the agent may not hold all its records yet",
            id="syncing",
        ),
        pytest.param(
            "revoked",
            "peer-revoked",
            "cell 'beta' is revoked for this agent: its backends are not used",
            id="revoked",
        ),
        pytest.param(
            "disconnected",
            "peer-disconnected",
            "cell 'beta' is disconnected for this agent: its backends are not used",
            id="disconnected",
        ),
    ],
)
async def test_peer_states(state: str, reason: str, note: str | None) -> None:
    ex = explain_service(
        ServiceRef("demo", "echo"),
        cell="alpha",
        node="a1",
        views=views(),
        peer_states={"beta": state},
    )
    [frontend] = ex.frontends
    beta = [row for row in frontend.rows if row.cell == "beta"]
    assert [row.reason for row in beta] == [reason]
    assert beta[0].selected is (reason == "selected")
    assert list(ex.notes) == ([note] if note else [])
    assert ex.peer_states == {"beta": state}
