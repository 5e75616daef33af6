"""The `nodeagent` console script as an operator runs it: flags, registration, maps, SIGTERM.

The agent process runs against the two-cell test mesh (real etcds and meshapis, in this test's
event loop), attaches the real BPF object to a private cgroup, registers its node and a workload
from a file, and must program the global service with both cells' backends. SIGTERM stops it
cleanly and leaves the datapath pinned (stop is not remove); the `datapath` fixture unpins.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from certs import Role
from meshcore.client import MeshClient
from meshcore.localetcd import free_loopback_port
from meshcore.model import Kind, Node
from nodeagent.app import DatapathConfig
from tests.conftest import Pki, assert_refused, http_get
from tests.nodeagent.conftest import Mesh, stop_process

BIN = Path(sys.executable).parent
NODEAGENT, MESHCTL = str(BIN / "nodeagent"), str(BIN / "meshctl")
WORKLOAD = "10.1.5.7"
WORKLOADS = f"""\
endpoints:
  - namespace: demo
    service: echo
    address: {WORKLOAD}
    ports: [{{name: http, port: 8080, protocol: TCP}}]
    ready: true
"""


def _served(pin_dir: Path) -> dict[str, Any]:
    """`meshctl bpf services -o json` of the agent's pins, by frontend."""
    out = subprocess.run(
        [MESHCTL, "bpf", "services", "--pin-dir", str(pin_dir), "-o", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return {f"{s['vip']}:{s['port']}": s for s in json.loads(out)["services"]}


def _backend_addresses(pin_dir: Path) -> set[str]:
    service = _served(pin_dir).get("10.96.0.10:80")
    if service is None:
        return set()
    return {slot["backend"]["address"] for slot in service["slots"] if slot["state"] == "ok"}


async def test_agent_process_registers_programs_the_maps_and_stops_on_sigterm(
    pki: Pki, mesh: Mesh, datapath: DatapathConfig, tmp_path: Path
) -> None:
    workloads = tmp_path / "workloads.yaml"
    workloads.write_text(WORKLOADS)
    http = free_loopback_port()
    args = [
        NODEAGENT, "--cell", "alpha", "--node", "a1", "--meshapi", mesh.alpha.address,
        "--tls-dir", str(pki.tls("alpha", Role.AGENT, node="a1")),
        "--cgroup", str(datapath.cgroup), "--pin-dir", str(datapath.pin_dir),
        "--bpf-object", str(datapath.object_path), "--http", f"127.0.0.1:{http}",
        "--node-address", "192.168.1.10", "--pod-cidr", "10.1.5.0/24",
        "--workloads", str(workloads), "--sync-timeout", "20", "--log-level", "warning",
    ]  # fmt: skip
    log = tmp_path / "nodeagent.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*args, stdout=out, stderr=out)
    try:

        async def until(check: Callable[[], bool], what: str) -> None:
            """Poll ``check`` in a thread (the meshapis run on this loop) for up to 30 s."""
            for _ in range(300):
                assert proc.returncode is None, log.read_text()
                if await asyncio.to_thread(check):
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"timed out waiting for {what}; log:\n{log.read_text()}")

        await until(lambda: http_get(http, "/readyz") == (200, "ready\n"), "nodeagent /readyz")
        assert await asyncio.to_thread(http_get, http, "/healthz") == (200, "ok\n")
        # The workload registered through the own meshapi, watched back, merged with beta's
        # backends and written into the pinned maps.
        want = {WORKLOAD, "10.1.0.2", "10.2.0.2", "10.2.0.3", "10.2.0.4"}
        await until(lambda: _backend_addresses(datapath.pin_dir) == want, "both cells in maps")
        async with MeshClient(mesh.alpha.address, pki.tls("alpha", Role.ADMIN)) as admin:
            records, _ = await admin.list([Kind.NODE])
        assert Node(
            cell="alpha", name="a1", addresses=["192.168.1.10"], pod_cidrs=["10.1.5.0/24"]
        ) in [record for _, record in records]
        status = json.loads((await asyncio.to_thread(http_get, http, "/status"))[1])
        assert status["peers"]["beta"]["state"] == "ready"
        assert status["own"]["synced"] is True
        code, metrics = await asyncio.to_thread(http_get, http, "/metrics")
        assert code == 200
        assert "nodeagent_endpoint_updates" in metrics
    finally:
        returncode = await stop_process(proc)
    assert returncode == 0, log.read_text()
    # Stopped, not removed: the programs stay attached and the maps keep serving.
    assert (datapath.pin_dir / "maps").is_dir()
    assert WORKLOAD in _backend_addresses(datapath.pin_dir)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(["--cgroup", "/sys/fs/cgroup/unified"], "refusing the root cgroup", id="root"),
        pytest.param(["--meshapi", "nowhere"], "is not HOST:PORT", id="meshapi"),
        pytest.param(["--http", "127.0.0.1:99999"], "--http", id="http-port"),
        pytest.param(["--pod-cidr", "10.1.0.1/16"], "has host bits set", id="cidr-host-bits"),
        pytest.param(["--node-address", "10.1.0.300"], "--node-address", id="node-address"),
        pytest.param(["--cell", "Alpha"], "cell", id="cell-name-uppercase"),
        pytest.param(["--stale-ttl", "0"], "--stale-ttl", id="stale-ttl"),
    ],
)
def test_bad_flags_are_refused_with_a_clear_message(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    base = {
        "--cell": "alpha", "--node": "a1", "--meshapi": "127.0.0.1:1",
        "--tls-dir": str(tmp_path), "--cgroup": str(tmp_path), "--pin-dir": str(tmp_path / "pins"),
        "--node-address": "192.168.1.10",
    }  # fmt: skip
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        base[flag] = value
    args = [NODEAGENT] + [x for kv in base.items() for x in kv]
    assert_refused(args, message)
    assert not (tmp_path / "pins").exists(), "nothing is created before the flags are checked"
