"""Scale benchmark (issue 11, acceptance 4): an agent syncs a peer cell of Cilium's scale-test size.

Run as root from the repository: ``.venv/bin/python bench/scale_peer.py [--endpoints 250000
--per-service 10 --observe 35 --lb-map-max N] [--quick]``; prints ONE JSON line.

Two real cells (an etcd and an in-process meshapi each, in the ``cells`` child process of
`agent_propagation`, reused), connected both ways. Beta holds --endpoints endpoints in global
services of --per-service endpoints (25 000 services of 10 by default); alpha holds the same
services, global and without endpoints, so its agent merges beta's. The records are written
straight into the etcds before the meshapis start — their real encoding (`encode_record`), in
batched txns (`EtcdStore.write`: as many puts per txn as etcd's limits allow) — so the set-up
takes seconds, not the ~25 minutes of one admin write per record. Every endpoint is its own
backend: beta's pod CIDR (a /16) cannot hold 250 000 addresses, so each service has its own
target port.

Then alpha's agent (`Agent` in this process, over real pinned maps sized by --lb-map-max, never
attached to a cgroup) starts and syncs. Reported: the time to full sync (every service in the
maps with all its backends, nothing pending), the entries in the kernel's maps (read back with
batch lookups) against those expected, whether beta's watcher was ever stale (sampled every
50 ms from the agent's start to the end of an --observe period after the sync: a first listing
longer than the heartbeat timeout used to flip it stale right after), the reconciler's write
attempts during that period, and any full map. With maps too small (--lb-map-max below the
need) the bench does not fail: it reports the map full, the entries kept and the attempts made
while idle (must stay 0: no retry loop). --quick: 25 000 endpoints, 5 s of observation.

Everything it starts is removed in ``finally`` (children, etcds, pins, temporary directory), also
on Ctrl-C or SIGTERM. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from agent_propagation import CELLS, Inbox, Resources, serve_cells, start_cells
from harness import BenchError, bench_main, interruptible, raise_on_sigterm

from bpf.layout import (
    BACKENDS_MAP,
    LB_MAP_MAX_DEFAULT,
    REVERSE_NAT_MAP,
    SERVICES_MAP,
    MapSizes,
)
from bpf.loader import SockLbLoader
from bpf.pinned_maps import PinnedLbMaps
from meshapi.etcd_adapter import EtcdStore
from meshcore.logs import configure_logging
from meshcore.model import Endpoint, Peer, Record, Service, encode_record
from meshcore.model.records import EndpointPort
from nodeagent.agent import Agent, AgentConfig
from nodeagent.peers import PeerState

REPO = Path(__file__).resolve().parents[1]
OBJECT = REPO / "bpf" / "sock_lb.o"
NAMESPACE = "scale"
VIP_BASE = IPv4Address("172.16.0.1")  # service i: VIP_BASE + i, port 80
PORT_BASE = 1024  # service i's endpoints listen on PORT_BASE + i (one backend per endpoint)
WRITE_CHUNK = 5000  # records per EtcdStore.write call (it splits them into txns)
SYNC_TIMEOUT = 900.0
SAMPLE_INTERVAL = 0.05


# --- records ------------------------------------------------------------------------------


def service(cell: str, i: int) -> Service:
    return Service.model_validate(
        {
            "cell": cell,
            "namespace": NAMESPACE,
            "name": f"s{i}",
            "frontends": [{"name": "http", "vip": VIP_BASE + i, "port": 80}],
            "global": True,
            "shared": True,
            "affinity": "none",
        }
    )


def endpoints(i: int, per: int) -> Iterator[Endpoint]:
    """Service i's endpoints in beta: addresses of beta's pod CIDR, port PORT_BASE + i."""
    pods = IPv4Network(CELLS["beta"][1])
    size = pods.num_addresses - 2
    for j in range(per):
        yield Endpoint(
            cell="beta",
            namespace=NAMESPACE,
            service=f"s{i}",
            address=pods.network_address + 1 + (i * per + j) % size,
            node="b1",
            ports=[EndpointPort(name="http", port=PORT_BASE + i)],
        )


def beta_records(services: int, per: int) -> Iterator[Record]:
    """Beta's records, each service followed by its endpoints."""
    for i in range(services):
        yield service("beta", i)
        yield from endpoints(i, per)


async def write_records(endpoint: str, records: Iterator[Record]) -> tuple[int, float]:
    """Put the records straight into an etcd, batched; returns (records, seconds)."""
    store = EtcdStore([endpoint], timeout=30.0)
    await store.connect()
    start, n = time.monotonic(), 0
    try:
        chunk: list[tuple[str, bytes]] = []
        for record in records:
            chunk.append((record.key(), encode_record(record)))
            if len(chunk) == WRITE_CHUNK:
                await store.write(puts=chunk)
                n, chunk = n + len(chunk), []
        if chunk:
            await store.write(puts=chunk)
            n += len(chunk)
    finally:
        await store.close()
    return n, time.monotonic() - start


# --- the run ------------------------------------------------------------------------------


@dataclass
class Observer:
    """Beta's watcher state, sampled: every transition, and when it first synced."""

    agent: Agent
    start: float
    transitions: list[tuple[float, str]] = field(default_factory=list)
    synced_at: float | None = None

    def sample(self) -> None:
        w = self.agent.watchers.get("beta")
        state = w.state.value if w is not None else "absent"
        if not self.transitions or self.transitions[-1][1] != state:
            self.transitions.append((round(time.monotonic() - self.start, 3), state))
        if self.synced_at is None and w is not None and w.synced_once:
            self.synced_at = time.monotonic() - self.start

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_INTERVAL)

    @property
    def ever_stale(self) -> bool:
        return any(state == PeerState.STALE.value for _, state in self.transitions)


def map_entries(maps: PinnedLbMaps) -> dict[str, int]:
    store = maps.store
    return {name: len(store.items(name)) for name in (SERVICES_MAP, BACKENDS_MAP, REVERSE_NAT_MAP)}


async def measure(
    res: Resources, tls: dict[str, str], args: argparse.Namespace, sizes: MapSizes
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    n_services = args.endpoints // args.per_service
    etcd = {cell: res.etcds[i].endpoint for i, cell in enumerate(CELLS)}
    figures: dict[str, Any] = {}
    agent: Agent | None = None
    maps: PinnedLbMaps | None = None
    sampler: asyncio.Task[None] | None = None
    inbox: Inbox | None = None
    try:
        beta_n, beta_s = await write_records(
            etcd["beta"],
            beta_records(n_services, args.per_service),
        )
        alpha_n, alpha_s = await write_records(
            etcd["alpha"], (service("alpha", i) for i in range(n_services))
        )
        figures["load"] = {
            "beta_records": beta_n,
            "beta_write_s": round(beta_s, 2),
            "alpha_records": alpha_n,
            "alpha_write_s": round(alpha_s, 2),
        }
        start = time.monotonic()
        cells = res.spawn("cells", serve_cells, etcd, tls)
        inbox = Inbox(cells.conn)
        address: dict[str, str] = (await inbox.get("ready", timeout=600))[1]
        figures["load"]["meshapis_ready_s"] = round(time.monotonic() - start, 2)
        for cell, other in (("alpha", "beta"), ("beta", "alpha")):
            peer = Peer(cell=cell, name=other, id=CELLS[other][0], address=address[other])
            await write_records(etcd[cell], iter([peer]))

        res.loader = SockLbLoader(
            object_path=OBJECT, instance=f"bench-{uuid.uuid4().hex[:10]}", sizes=sizes
        )
        res.loader.load()
        maps = PinnedLbMaps(res.loader.maps_dir, sizes=sizes)
        config = AgentConfig(
            cell="alpha", node="a1", meshapi=address["alpha"], tls_dir=Path(tls["alpha-agent"])
        )
        agent = Agent(config, maps=maps)
        cpu0, start = time.process_time(), time.monotonic()
        observer = Observer(agent, start)
        await agent.start()
        sampler = asyncio.create_task(observer.run())
        rec = agent.reconciler

        def settled() -> bool:
            """Beta listed, every service merged whole, and the maps hold it (or are full)."""
            want = agent.desired.wanted.services
            if observer.synced_at is None or len(want) < n_services or rec.pending:
                return False
            if sum(len(e.backend_ids) for e in want.values()) < n_services * args.per_service:
                return False
            return bool(rec.full_maps()) or agent.maps.landed == agent.desired.wanted

        deadline = start + SYNC_TIMEOUT
        while not settled():
            if inbox.failed:
                raise BenchError(f"the cells process failed: {inbox.failed}")
            if time.monotonic() > deadline:
                raise BenchError(f"no full sync within {SYNC_TIMEOUT:.0f}s")
            await asyncio.sleep(0.2)
        sync_s, sync_cpu = time.monotonic() - start, time.process_time() - cpu0
        entries = map_entries(maps)
        dump = maps.dump()
        # Service-map entries no master reaches (slots without a master, or past its count):
        # room a refused write would waste.
        reachable = sum(1 + s.count for s in maps.contents().services if s.count is not None)
        attempts, refused = rec.stats.attempts, sum(rec.full.refused.values())
        cpu1 = time.process_time()
        await asyncio.sleep(args.observe)  # the observation period (the sampler runs)
        observe_cpu = time.process_time() - cpu1
        observer.sample()
        kept = set(dump.splitlines()) <= set(maps.dump().splitlines())
        expected = {
            SERVICES_MAP: n_services * (args.per_service + 1),
            BACKENDS_MAP: n_services * args.per_service,
            REVERSE_NAT_MAP: n_services,
        }
        figures.update(
            {
                "full_sync_s": round(sync_s, 2),
                "full_sync_cpu_s": round(sync_cpu, 2),
                "peer_listed_s": round(observer.synced_at, 2) if observer.synced_at else None,
                "entries": entries,
                "expected_entries": expected,
                "all_entries": entries == expected,
                "services_in_maps": len(agent.maps.landed.services),
                "services_complete": sum(
                    1
                    for f, e in agent.maps.landed.services.items()
                    if agent.desired.wanted.services.get(f) == e
                ),
                "unreachable_service_entries": entries[SERVICES_MAP] - reachable,
                "full_maps": {
                    f.map_name: {"capacity": f.capacity, "parked": f.parked, "refused": f.refused}
                    for f in rec.full_maps()
                },
                "observe_s": args.observe,
                "observe_cpu_s": round(observe_cpu, 3),
                "observe_write_attempts": rec.stats.attempts - attempts,
                "observe_refused": sum(rec.full.refused.values()) - refused,
                "entries_kept": kept,
                "peer_ever_stale": observer.ever_stale,
                "peer_states": observer.transitions,
                "reconciler": {
                    "attempts": rec.stats.attempts,
                    "applies": rec.stats.applies,
                    "failed": rec.stats.failed,
                },
                "agent": {"rounds": agent.stats.rounds, "merges": agent.stats.merges},
            }
        )
    finally:
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        if agent is not None:
            await agent.stop()
        if maps is not None:
            maps.close()
        if inbox is not None:
            inbox.close()
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, raise_on_sigterm)
    return figures


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=250_000, help="beta's endpoints")
    parser.add_argument("--per-service", type=int, default=10, help="endpoints per service")
    parser.add_argument(
        "--observe", type=float, default=35.0, help="seconds watched after the sync"
    )
    parser.add_argument("--lb-map-max", type=int, default=LB_MAP_MAX_DEFAULT)
    parser.add_argument("--quick", action="store_true", help="25 000 endpoints, 5 s of observation")
    args = parser.parse_args(argv)
    if args.quick:
        args.endpoints, args.observe = 25_000, 5.0
    if args.per_service < 1 or args.endpoints < args.per_service or args.observe < 0:
        parser.error("need --per-service >= 1, --endpoints >= --per-service, --observe >= 0")
    if args.endpoints // args.per_service > 65_535 - PORT_BASE:
        parser.error("one target port per service: at most 64 511 services")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise BenchError("run as root (BPF maps)")
    if not OBJECT.is_file():
        raise BenchError(f"{OBJECT}: no BPF object (run `make setup`)")
    try:
        sizes = MapSizes.from_lb_map_max(args.lb_map_max)
    except ValueError as e:
        raise BenchError(str(e)) from e
    configure_logging("warning")  # structlog to stderr: stdout carries the JSON line only
    res = Resources(Path(tempfile.mkdtemp(prefix="cellmesh-bench-")))
    with interruptible("scale_peer", res.release):
        tls = start_cells(res)
        figures = asyncio.run(measure(res, tls, args, sizes))
    return {
        "endpoints": args.endpoints,
        "per_service": args.per_service,
        "services": args.endpoints // args.per_service,
        "lb_map_max": args.lb_map_max,
        **figures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return bench_main("scale_peer", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
