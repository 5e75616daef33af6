"""A full BPF map is a clear, bounded condition (issue 11, defect 5).

The reconciler over maps too small for the desired state: a refused key is parked, not retried
hot (write attempts counted by the reconciler stay flat), nothing the maps held is lost, the
condition is reported (`full_maps()`, /status, /metrics, the agent's report read by `meshctl
status`) and logged once, and it recovers when services are deleted. First on `FakeLbMaps` with
an injected clock, then end to end: a real agent, real etcd and meshapi, real pinned maps sized
by the agent's map-size setting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from bpf.fakemaps import FakeLbMaps
from bpf.layout import IPPROTO_TCP, SERVICES_MAP, MapSizes
from bpf.lbstate import Frontend
from bpf.pinned_maps import PinnedLbMaps
from certs import Role
from meshcore.client import MeshClient
from meshcore.lbpolicy import ServiceRef
from meshcore.model import AgentStatus, Kind
from meshctl.contexts import Context
from meshctl.status_commands import status_document
from nodeagent.app import AgentApp, DatapathConfig
from nodeagent.desired import DesiredLb
from nodeagent.fullmaps import FullMap
from nodeagent.reconciler import Reconciler
from tests.conftest import Pki, wait_for
from tests.meshapi.helpers import endpoint, service
from tests.nodeagent.conftest import Mesh, agent_config
from tests.nodeagent.test_reconciler import Clock, assert_datapath_valid, fe, merged

RETRY = 60.0


def svc(n: int) -> ServiceRef:
    return ServiceRef("shop", f"svc{n}")


def backends_of(n: int, count: int = 3) -> list[str]:
    return [f"10.1.{n}.{i + 1}" for i in range(count)]


@pytest.fixture
def full() -> tuple[FakeLbMaps, DesiredLb, Reconciler, Clock]:
    """Services map of 16 entries: four services of three backends (4 entries each) fit."""
    maps = FakeLbMaps(sizes=MapSizes(services=16, backends=64, reverse_nat=16))
    desired, clock = DesiredLb(), Clock()
    reconciler = Reconciler(maps, desired, backoff=(1.0, 2.0), map_full_retry=RETRY, clock=clock)
    reconciler.allow_deletes()
    return maps, desired, reconciler, clock


def test_a_full_map_parks_the_refused_keys_and_logs_once(
    full: tuple[FakeLbMaps, DesiredLb, Reconciler, Clock],
) -> None:
    maps, desired, reconciler, clock = full
    for n in range(6):
        desired.set_service(svc(n), merged(svc(n), backends_of(n)))
    with capture_logs() as logs:
        reconciler.sync()
        assert len(maps.landed.services) == 4
        assert reconciler.full_maps() == [FullMap(SERVICES_MAP, 16, parked=2, refused=2)]
        # The batch, its 18 backends as one batch, then each of the 6 services once.
        assert reconciler.stats.attempts == 1 + 1 + 6
        assert reconciler.pending == 0  # parked keys are not a retry queue
        # No retry loop: sync after sync, seconds apart, attempts nothing.
        attempts, dump = reconciler.stats.attempts, maps.dump()
        for _ in range(50):
            clock.advance(1.0)
            reconciler.sync()
        assert reconciler.stats.attempts == attempts
        assert maps.dump() == dump
    full_logs = [e for e in logs if e["event"].startswith("LB map full")]
    assert len(full_logs) == 1
    assert full_logs[0]["map"] == SERVICES_MAP
    assert full_logs[0]["capacity"] == 16
    assert_datapath_valid(maps)


def test_a_refused_change_keeps_the_old_entries(
    full: tuple[FakeLbMaps, DesiredLb, Reconciler, Clock],
) -> None:
    maps, desired, reconciler, _clock = full
    for n in range(4):
        desired.set_service(svc(n), merged(svc(n), backends_of(n)))
    reconciler.sync()
    assert reconciler.full_maps() == []
    before = set(maps.dump().splitlines())
    # One more backend for svc0 needs a 17th entry: refused, and svc0 keeps its three.
    desired.set_service(svc(0), merged(svc(0), backends_of(0, 4)))
    reconciler.sync()
    assert [f.map_name for f in reconciler.full_maps()] == [SERVICES_MAP]
    after = set(maps.dump().splitlines())
    assert before - after == set(), "an entry the maps held was lost"
    contents = maps.contents()
    kept = next(s for s in contents.services if s.frontend == fe(svc(0)))
    assert kept.count == 3
    assert len(kept.backend_ids) == 3
    assert_datapath_valid(maps)


def test_deleting_services_makes_room_for_the_parked_ones(
    full: tuple[FakeLbMaps, DesiredLb, Reconciler, Clock],
) -> None:
    maps, desired, reconciler, _clock = full
    for n in range(6):
        desired.set_service(svc(n), merged(svc(n), backends_of(n)))
    reconciler.sync()
    parked_before = reconciler.full_maps()[0].parked
    assert parked_before == 2
    written = [n for n in range(6) if fe(svc(n)) in maps.landed.services]
    for n in written[:2]:
        desired.set_service(svc(n), None)
    reconciler.sync()  # deletes: 8 entries leave, the two parked services are queued
    reconciler.sync()  # ... and written
    assert reconciler.full_maps() == []
    assert maps.landed == desired.wanted
    assert_datapath_valid(maps)


def test_a_full_map_is_probed_once_per_retry_period(
    full: tuple[FakeLbMaps, DesiredLb, Reconciler, Clock],
) -> None:
    maps, desired, reconciler, clock = full
    for n in range(6):
        desired.set_service(svc(n), merged(svc(n), backends_of(n)))
    reconciler.sync()
    attempts = reconciler.stats.attempts
    with capture_logs() as logs:
        clock.advance(RETRY + 1)
        reconciler.sync()
        assert reconciler.stats.attempts == attempts + 1  # one probe, refused again
        assert reconciler.full_maps()[0].parked == 2  # still reported while probing
        for _ in range(10):
            clock.advance(RETRY / 10)
            reconciler.sync()
        assert reconciler.stats.attempts == attempts + 2  # the next period's probe
    assert logs == []  # the condition goes on: nothing more to say about it
    # Room made where the reconciler cannot see it (as if the map had grown): the next probe
    # lands, and the next parked key follows at once, not a period later.
    maps.capacity[SERVICES_MAP] = 32
    clock.advance(RETRY)
    reconciler.sync()
    assert reconciler.full_maps()[0].parked == 1
    reconciler.sync()
    assert reconciler.full_maps() == []
    assert maps.landed == desired.wanted
    assert reconciler.stats.attempts == attempts + 4


# --- end to end: a real agent on real pinned maps ---------------------------------------------

SMALL_MAPS = MapSizes.from_lb_map_max(64)
N_SERVICES = 24  # of 2 endpoints: 72 service entries, and demo/echo's 5: 77 for 64


def small_service(i: int) -> list[Any]:
    return [
        service("alpha", f"s{i}", vip=f"10.96.1.{i + 1}"),
        *(endpoint("alpha", 100 + 3 * i + j, service=f"s{i}") for j in range(2)),
    ]


def pinned_dump(datapath: DatapathConfig) -> str:
    with PinnedLbMaps(datapath.pin_dir / "maps") as maps:
        return maps.dump()


def http_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return str(resp.read().decode())


@pytest.fixture
async def small_agent(pki: Pki, mesh: Mesh, datapath: DatapathConfig) -> AsyncIterator[AgentApp]:
    app = AgentApp(
        agent_config(pki, mesh),
        http="127.0.0.1:0",
        datapath=dataclasses.replace(datapath, map_sizes=SMALL_MAPS),
    )
    try:
        yield app
    finally:
        await app.stop()


async def test_an_agent_with_too_small_maps_reports_map_full_keeps_its_entries_and_recovers(
    pki: Pki, mesh: Mesh, datapath: DatapathConfig, small_agent: AgentApp
) -> None:
    await mesh.alpha.write(puts=[r for i in range(N_SERVICES) for r in small_service(i)])
    with capture_logs() as logs:
        await small_agent.start()
        agent = small_agent.agent
        assert agent is not None
        rec = agent.reconciler

        def settled() -> bool:
            return (
                rec.deletes_allowed
                and len(agent.desired.wanted.services) == N_SERVICES + 1
                and bool(rec.full_maps())
                and rec.pending == 0
            )

        await wait_for(settled, timeout=30, what="every service seen, the services map full")
        [full] = rec.full_maps()
        assert (full.map_name, full.capacity) == (SERVICES_MAP, 64)
        written = agent.maps.landed.services
        want = agent.desired.wanted.services
        # Every service is either in the maps as wanted, or parked (a service refused a larger
        # backend set is both in the maps, with its old entry, and parked).
        done = {f for f, e in written.items() if want.get(f) == e}
        assert len(done) + full.parked == N_SERVICES + 1
        contents = agent.maps.contents()
        assert sum(1 + len(s.slots) for s in contents.services) <= 64
        # No orphan slots: every service in the maps has its master (a parked one that grew
        # keeps its old entry, and is in the maps though not in the view).
        assert all(s.count is not None for s in contents.services)
        assert set(written) <= {s.frontend for s in contents.services}
        dump = pinned_dump(datapath)

        # No retry loop: forty agent rounds later, not one more write attempt; the maps as they
        # were.
        attempts, rounds = rec.stats.attempts, agent.stats.rounds
        await wait_for(lambda: agent.stats.rounds >= rounds + 40, timeout=20, what="40 rounds")
        assert rec.stats.attempts == attempts
        assert pinned_dump(datapath) == dump

        # Reported: /status, /metrics, and the agent's report that `meshctl status` reads.
        status = json.loads(await asyncio.to_thread(http_get, small_agent.http_port, "/status"))
        assert status["maps"]["full"] == {
            SERVICES_MAP: {"capacity": 64, "parked": full.parked, "refused": full.refused}
        }
        metrics = await asyncio.to_thread(http_get, small_agent.http_port, "/metrics")
        assert f'nodeagent_bpf_map_full{{map="{SERVICES_MAP}"}} 1.0' in metrics
        assert f'nodeagent_bpf_map_refused_entries_total{{map="{SERVICES_MAP}"}}' in metrics
        report = await wait_agent_report(pki, mesh, lambda r: bool(r.full_maps))
        assert report.full_maps == {SERVICES_MAP: full.parked}
        ctx = Context("alpha", mesh.alpha.address, pki.tls("alpha", Role.ADMIN))
        doc = status_document(ctx, cell=("alpha", 1, 1), records=[report], error=None,
                              now=time.time())  # fmt: skip
        assert any(f"BPF map {SERVICES_MAP} full" in p for p in doc["problems"]), doc["problems"]
        assert doc["agents"][0]["full_maps"] == {SERVICES_MAP: full.parked}

        # A written service that grows by more than the room left (< 3 entries, or one more
        # service of 2 would fit) cannot: refused, and it keeps what it had.
        grown = next(i for i in range(N_SERVICES) if fe_of(i) in written)
        refused = full.refused
        more = [endpoint("alpha", 400 + j, service=f"s{grown}") for j in range(3)]
        await mesh.alpha.write(puts=more)
        await wait_for(lambda: rec.full_maps()[0].refused > refused, timeout=10, what="refusal")
        lost = set(dump.splitlines()) - set(pinned_dump(datapath).splitlines())
        assert lost == set(), f"entries lost: {lost}"

        # Deleting services makes room: every parked service is written, the condition clears.
        gone = [i for i in range(N_SERVICES) if fe_of(i) in agent.maps.landed.services][:6]
        await mesh.alpha.write(deletes=[service("alpha", f"s{i}").key() for i in gone])

        def recovered() -> bool:
            return not rec.full_maps() and agent.maps.landed == agent.desired.wanted

        await wait_for(recovered, timeout=20, what="the parked services written")
        assert len(agent.maps.landed.services) == N_SERVICES + 1 - len(gone)
    full_logs = [e for e in logs if e["event"].startswith("LB map full")]
    assert len(full_logs) == 1, full_logs
    assert [e["map"] for e in logs if e["event"] == "LB map has room again"] == [SERVICES_MAP]


def fe_of(i: int) -> Frontend:
    return Frontend(ipaddress.IPv4Address(f"10.96.1.{i + 1}"), 80, IPPROTO_TCP)


async def wait_agent_report(
    pki: Pki, mesh: Mesh, condition: Any, timeout: float = 20.0
) -> AgentStatus:
    """The alpha/a1 AgentStatus record, once it meets condition (polled through meshapi)."""
    deadline = time.monotonic() + timeout
    async with MeshClient(mesh.alpha.address, pki.tls("alpha", Role.ADMIN)) as admin:
        while True:
            listed, _ = await admin.list([Kind.AGENT])
            for _, record in listed:
                if isinstance(record, AgentStatus) and record.node == "a1" and condition(record):
                    return record
            assert time.monotonic() < deadline, "no agent report met the condition"
            await asyncio.sleep(0.1)
