"""Node agent benchmark (issue 4): write → BPF map, open loop against raw etcd, CPU per change.

Run as root from the repository: ``.venv/bin/python bench/agent_propagation.py [--rate 100
--samples 1000 --backends 10000 --services 2000] [--quick]``; prints ONE JSON line (~45 s;
--quick: 200 samples a mode, 1,000 backends, 200 services, ~13 s).

Three processes and two etcds, all on loopback, so that this process's CPU is the agent's:

- this one: the alpha node agent (`Agent`, in process) over real pinned maps (`bpf/sock_lb.o`
  loaded, never attached), wrapped to timestamp every map apply;
- ``cells``: the meshapis of alpha and beta (in-process `MeshApiApp`s, one etcd each, the heap
  frozen once loaded as ``meshapi.main`` does), the load generator and the raw etcd floor;
- ``watcher``: a plain `ListWatcher` of beta's endpoints with an alpha agent certificate, an
  intermediate figure: write → etcd → meshapi watch cache → gRPC stream → decoded record.

Set-up: the cells connected both ways; in both, global services: bench/big (VIP
172.20.0.10:80/TCP, never dialled) with --backends endpoints in beta and 3 in alpha, and
--services small ones bench/s<i> (VIPs in 172.21.0.0/16) with 2 to 5 endpoints each in beta.

Changes, open loop at --rate per second (issued on schedule, never waiting for earlier ones;
how late the generator issued each is reported), in rounds that rotate the order of three
modes so that a noisy shared machine hits each alike:

- ``floor``: a raw etcd put (`EtcdStore.write`) of an endpoint record under ``floor/`` in beta's
  etcd → its event on a raw etcd watch (`EtcdStore.watch_prefix`), both in the cells process:
  the least any path through etcd can take;
- ``realistic``: an admin write adding an endpoint to one of the small services, spread round
  robin over them → the agent's maps hold it in that service's slots;
- ``big``: the same for bench/big.

A sample runs from just before the write is issued (cells process) to the event (floor), the
map apply that put the backend in the service (agent) and the decoded record (watcher).
Timestamps are CLOCK_MONOTONIC (`time.monotonic`), one clock for all processes on Linux.

CPU, per agent mode, over its rounds (from the first write to the last backend in the maps),
divided by its changes: this process's `process_time` (the agent, its gRPC threads, and the
bench's own pipe reading and stamping, the latter reported apart) and the event loop thread's
`thread_time`; inside it, the agent's rounds, their merge step, `DesiredLb.set_frontends` /
`update_frontend` and `LbMaps.apply` (thin subclasses add timers, nothing else), and the cyclic
GC (`gc.callbacks`). The idle baseline is the same counters over the floor rounds (the agent
receives nothing then: ticks and heartbeats only), scaled to the mode's duration. Everything it
starts is stopped and removed in ``finally``, also on Ctrl-C or SIGTERM. See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from harness import BenchError, bench_main, interruptible, paced, raise_on_sigterm, ratio

from bpf.layout import IPPROTO_TCP
from bpf.lbstate import BackendId, LbDiff
from bpf.lbstate import Frontend as LbFrontend
from bpf.loader import SockLbLoader
from bpf.pinned_maps import PinnedLbMaps
from certs import Role, create_ca, issue_certificate
from meshapi.app import MeshApiApp, MeshApiConfig
from meshapi.etcd_adapter import EtcdStore
from meshcore.client import MeshClient
from meshcore.lbpolicy import MergedBackend, ServiceRef
from meshcore.localetcd import LocalEtcd
from meshcore.logs import configure_logging
from meshcore.model import Endpoint, Kind, Peer, Service, encode_record
from meshcore.model.records import EndpointPort
from meshcore.model.records import Frontend as RecordFrontend
from meshcore.watch.listwatch import Change, ListWatcher
from nodeagent.agent import Agent, AgentConfig, Histogram
from nodeagent.core import AgentCore
from nodeagent.desired import DesiredLb
from nodeagent.meshview import PeerTarget

REPO = Path(__file__).resolve().parents[1]
OBJECT = REPO / "bpf" / "sock_lb.o"
TRUST_DOMAIN = "bench.test"
CELLS = {
    "alpha": (1, "10.1.0.0/16", "192.168.1.0/24"),
    "beta": (2, "10.2.0.0/16", "192.168.2.0/24"),
}
NAMESPACE, SERVICE = "bench", "big"
VIP, VIP_PORT, TARGET_PORT = "172.20.0.10", 80, 8080
SMALL_VIPS = IPv4Network("172.21.0.0/16")
SMALL_BASE = 40_000  # beta pod numbers from here on are the small services' endpoints
ALPHA_ENDPOINTS = 3
WRITE_BATCH = 500  # records per admin write while loading
HEARTBEAT_INTERVAL = 5.0  # meshapi's default
FLOOR_PREFIX = "floor/"  # outside meshapi's prefix: its watch cache never sees these
MODES = ("floor", "realistic", "big")
ROUNDS = 4
DRAIN_TIMEOUT = 60.0  # after the last change of a round is issued
SYNC_TIMEOUT = 300.0  # the initial sync merges the growing service once per listing chunk


# --- records ------------------------------------------------------------------------------


def pod_address(cell: str, n: int) -> IPv4Address:
    return IPv4Network(CELLS[cell][1]).network_address + 1 + n


def endpoint(cell: str, n: int, *, service: str = SERVICE, updated_at: float = 0.0) -> Endpoint:
    return Endpoint(
        cell=cell,
        namespace=NAMESPACE,
        service=service,
        address=pod_address(cell, n),
        node="n1",
        ports=[EndpointPort(name="http", port=TARGET_PORT)],
        updated_at=updated_at,
    )


def global_service(cell: str, name: str, vip: str) -> Service:
    return Service.model_validate(
        {
            "cell": cell,
            "namespace": NAMESPACE,
            "name": name,
            "frontends": [{"name": "http", "vip": ip_address(vip), "port": VIP_PORT}],
            "global": True,
            "shared": True,
            "affinity": "none",
        }
    )


def big_service(cell: str) -> Service:
    return global_service(cell, SERVICE, VIP)


def small_name(i: int) -> str:
    return f"s{i}"


def small_vip(i: int) -> str:
    return str(SMALL_VIPS.network_address + 1 + i)


def small_size(i: int) -> int:
    """Endpoints of small service i at the start: 2 to 5."""
    return 2 + i % 4


def small_total(services: int) -> int:
    return sum(small_size(i) for i in range(services))


# --- pipes between the processes ----------------------------------------------------------

Message = tuple[Any, ...]


class Inbox:
    """Messages from a pipe, read by the event loop (no thread). `on_message` may take one
    (returns True) instead of queueing it; `wake` is called on every message and on EOF."""

    def __init__(
        self,
        conn: Connection,
        *,
        on_message: Callable[[Message], bool] | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.conn = conn
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.failed: str | None = None
        self._on_message = on_message
        self._wake = wake
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                msg: Message = self.conn.recv()
                if msg[0] == "error":
                    self.failed = str(msg[1])
                if self._on_message is None or not self._on_message(msg):
                    self.queue.put_nowait(msg)
        except (EOFError, OSError):
            self.close()
            self.failed = self.failed or "the process exited"
            self.queue.put_nowait(("eof",))
        if self._wake is not None:
            self._wake()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._loop.remove_reader(self.conn.fileno())

    async def get(self, kind: str, *, timeout: float) -> Message:
        try:
            async with asyncio.timeout(timeout):
                msg = await self.queue.get()
        except TimeoutError:
            raise BenchError(f"no {kind!r} message within {timeout:.0f}s") from None
        if msg[0] != kind:
            raise BenchError(f"expected {kind!r}, got {msg[0]!r}: {self.failed or msg}")
        return msg


def child_entry(conn: Connection, main: Callable[..., Any], *args: Any) -> None:
    """A child's start: quiet logs to stderr, Ctrl-C left to the parent, errors sent back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, in order
    configure_logging("warning")
    try:
        asyncio.run(main(conn, *args))
    except BaseException:
        with contextlib.suppress(OSError, ValueError):
            conn.send(("error", traceback.format_exc()))
        raise


# --- the cells process: both meshapis, every write, and the raw etcd floor -----------------


@dataclass
class Cells:
    """The cells process's state: its meshapis, admin clients, shape and raw etcd floor."""

    etcd: dict[str, str]
    apps: dict[str, MeshApiApp] = field(default_factory=dict)
    admins: dict[str, MeshClient] = field(default_factory=dict)
    backends: int = 0
    services: int = 0
    small_endpoints: int = 0  # of the small services, at the start
    floor: EtcdStore | None = None
    floor_seen: dict[str, float] = field(default_factory=dict)  # key -> time of its event
    floor_progress: asyncio.Event = field(default_factory=asyncio.Event)
    floor_watch: asyncio.Task[None] | None = None

    async def start_floor(self) -> None:
        """Connect to beta's etcd and watch ``floor/`` from now on."""
        self.floor = EtcdStore([self.etcd["beta"]], timeout=30.0)
        await self.floor.connect()
        revision = await self.floor.current_revision()
        self.floor_watch = asyncio.create_task(self._watch_floor(self.floor, revision + 1))

    async def _watch_floor(self, store: EtcdStore, revision: int) -> None:
        async for batch in store.watch_prefix(FLOOR_PREFIX, start_revision=revision):
            now = time.monotonic()
            for event in batch.events:
                self.floor_seen.setdefault(event.key, now)
            self.floor_progress.set()

    async def floor_change(self, k: int) -> tuple[str, float, float]:
        record = endpoint("beta", k, service=small_name(k % max(self.services, 1)))
        key, value = FLOOR_PREFIX + record.key(), encode_record(record)
        assert self.floor is not None
        t0 = time.monotonic()
        await self.floor.write(puts=[(key, value)])
        return key, t0, time.monotonic() - t0

    async def agent_change(self, mode: str, k: int) -> tuple[str, float, float]:
        """Add endpoint k of the mode: (its address, time issued, write RPC seconds)."""
        if mode == "big":
            n, service = self.backends + k, SERVICE
        else:
            n, service = SMALL_BASE + self.small_endpoints + k, small_name(k % self.services)
        t0 = time.monotonic()
        record = endpoint("beta", n, service=service, updated_at=time.time())
        await self.admins["beta"].write(puts=[record])
        return str(record.address), t0, time.monotonic() - t0

    async def load(self, mode: str, first: int, count: int, rate: float) -> Message:
        """`count` changes of `mode` at `rate`/s, open loop (each issued on schedule as a task,
        never waiting for earlier ones); then wait for every write (and floor event)."""
        if mode == "floor" and self.floor is None:
            await self.start_floor()
        tasks: list[asyncio.Task[tuple[str, float, float]]] = []
        late: list[float] = []
        async for i, behind in paced(count, rate):
            late.append(behind)
            change: Coroutine[Any, Any, tuple[str, float, float]] = (
                self.floor_change(first + i)
                if mode == "floor"
                else self.agent_change(mode, first + i)
            )
            tasks.append(asyncio.create_task(change))
        rows = await asyncio.gather(*tasks)
        floor: list[float] = []
        if mode == "floor":
            async with asyncio.timeout(DRAIN_TIMEOUT):
                while not all(key in self.floor_seen for key, _, _ in rows):
                    self.floor_progress.clear()
                    await self.floor_progress.wait()
            floor = [self.floor_seen[key] - t0 for key, t0, _ in rows]
        return ("done", mode, list(rows), late, floor)

    async def close(self) -> None:
        if self.floor_watch is not None:
            self.floor_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.floor_watch
        if self.floor is not None:
            await self.floor.close()
        for client in self.admins.values():
            await client.close()
        for app in self.apps.values():
            await app.stop()


async def serve_cells(conn: Connection, etcd: dict[str, str], tls: dict[str, str]) -> None:
    """Serve both cells; on ("setup", backends[, services]) load them, on ("load", mode, first,
    count, rate) make changes (`Cells.load`); ("stop",) or EOF ends it."""
    inbox = Inbox(conn)
    cells = Cells(etcd)
    try:
        for cell, (cell_id, pods, nodes) in CELLS.items():
            app = cells.apps[cell] = MeshApiApp(
                MeshApiConfig(
                    cell=cell,
                    cell_id=cell_id,
                    pod_cidrs=(ip_network(pods),),
                    node_cidrs=(ip_network(nodes),),
                    etcd_endpoints=(etcd[cell],),
                    listen="127.0.0.1:0",
                    tls_dir=Path(tls[f"{cell}-meshapi"]),
                    http="127.0.0.1:0",
                    heartbeat_interval=HEARTBEAT_INTERVAL,
                )
            )
            await app.start()
            await app.wait_ready()
        address = {cell: f"127.0.0.1:{app.grpc_port}" for cell, app in cells.apps.items()}
        for cell in CELLS:
            cells.admins[cell] = MeshClient(address[cell], Path(tls[f"{cell}-admin"]))
        conn.send(("ready", address))
        while True:
            msg = await inbox.queue.get()
            if msg[0] == "setup":
                start = time.monotonic()
                cells.backends = int(msg[1])
                cells.services = int(msg[2]) if len(msg) > 2 else 0
                cells.small_endpoints = small_total(cells.services)
                await load_cells(
                    cells.apps,
                    cells.admins,
                    address,
                    backends=cells.backends,
                    services=cells.services,
                )
                # As the meshapi process does once synced (meshapi.main.freeze_heap_once_synced).
                gc.collect()
                gc.freeze()
                conn.send(("loaded", time.monotonic() - start))
            elif msg[0] == "load":
                _, mode, first, count, rate = msg
                conn.send(await cells.load(str(mode), int(first), int(count), float(rate)))
            else:  # "stop" or EOF
                break
    finally:
        inbox.close()
        await cells.close()


async def load_cells(
    apps: dict[str, MeshApiApp],
    admins: dict[str, MeshClient],
    address: dict[str, str],
    *,
    backends: int,
    services: int = 0,
) -> None:
    """Peers both ways; bench/big and the small services in both cells, their endpoints; wait
    for beta's watch cache."""
    small = [(small_name(i), small_vip(i)) for i in range(services)]
    for cell, other in (("alpha", "beta"), ("beta", "alpha")):
        peer = Peer(cell=cell, name=other, id=CELLS[other][0], address=address[other])
        await admins[cell].write(puts=[big_service(cell), peer])
        for first in range(0, services, WRITE_BATCH):
            batch = [global_service(cell, *s) for s in small[first : first + WRITE_BATCH]]
            await admins[cell].write(puts=batch)
    await admins["alpha"].write(puts=[endpoint("alpha", n) for n in range(ALPHA_ENDPOINTS)])
    records = [endpoint("beta", n) for n in range(backends)]
    n = SMALL_BASE
    for i in range(services):
        for _ in range(small_size(i)):
            records.append(endpoint("beta", n, service=small_name(i)))
            n += 1
    revision = 0
    for first in range(0, len(records), WRITE_BATCH):
        revision = await admins["beta"].write(puts=records[first : first + WRITE_BATCH])
    await apps["beta"].cache.wait_revision(revision, timeout=60)


# --- the watcher process: the baseline ----------------------------------------------------


async def watch_endpoints(conn: Connection, address: str, tls_dir: str) -> None:
    """List beta's endpoints, then report every endpoint put: (address, time decoded)."""
    inbox = Inbox(conn)
    live = False

    def on_change(change: Change) -> None:
        now = time.monotonic()
        if live and isinstance(change.record, Endpoint):
            conn.send(("event", str(change.record.address), now))

    client = MeshClient(address, Path(tls_dir))
    watcher = ListWatcher(client, kinds=[Kind.ENDPOINT], on_change=on_change)
    task = asyncio.create_task(watcher.run())
    try:
        start = time.monotonic()
        async with asyncio.timeout(120):
            await watcher.synced.wait()
        live = True
        conn.send(("synced", len(watcher.records), time.monotonic() - start))
        await inbox.queue.get()  # "stop" or EOF
    finally:
        inbox.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


# --- the agent side: maps and agent that keep time ----------------------------------------


class StampedLbMaps(PinnedLbMaps):
    """`PinnedLbMaps` noting, per backend address, when the first successful apply left it in a
    service's slots (backends of big diffs, the initial sync, are not tracked), and the CPU
    (thread time) spent in `apply` and in that bookkeeping."""

    SMALL = 64

    def __init__(self, maps_dir: Path, *, on_apply: Callable[[], None]) -> None:
        super().__init__(maps_dir)
        self.landed_at: dict[str, float] = {}
        self.applies = 0
        self.diff_keys = 0  # backends + services of the applied diffs
        self.apply_cpu = 0.0
        self.stamp_cpu = 0.0  # the bench's own bookkeeping above, not the agent's
        self._waiting: dict[BackendId, str] = {}  # backend id -> address, until a service has it
        self._on_apply = on_apply

    def apply(self, diff: LbDiff) -> None:
        start = time.thread_time()
        super().apply(diff)
        now = time.monotonic()
        stamp = time.thread_time()
        self.apply_cpu += stamp - start
        self.applies += 1
        self.diff_keys += len(diff)
        if len(diff.backends) <= self.SMALL:
            for bid, be in diff.backends.items():
                if be is not None:
                    self._waiting[bid] = str(be.address)
        if self._waiting and diff.services:
            entries = [e for e in diff.services.values() if e is not None]
            for bid in [b for b in self._waiting if any(b in e.backend_ids for e in entries)]:
                self.landed_at.setdefault(self._waiting.pop(bid), now)
        self.stamp_cpu += time.thread_time() - stamp
        self._on_apply()


class TimedDesiredLb(DesiredLb):
    """`DesiredLb` adding up the CPU (thread time) of `set_frontends` and `update_frontend`."""

    set_cpu: float = 0.0

    def set_frontends(
        self,
        ref: ServiceRef,
        frontends: Iterable[tuple[RecordFrontend, Iterable[MergedBackend]]] | None,
    ) -> None:
        start = time.thread_time()
        try:
            super().set_frontends(ref, frontends)
        finally:
            self.set_cpu += time.thread_time() - start

    def update_frontend(
        self,
        ref: ServiceRef,
        frontend: RecordFrontend,
        added: Iterable[MergedBackend],
        removed: Iterable[MergedBackend],
    ) -> None:
        start = time.thread_time()
        try:
            super().update_frontend(ref, frontend, added, removed)
        finally:
            self.set_cpu += time.thread_time() - start


class TimedCore(AgentCore):
    """`AgentCore` adding up the CPU (thread time) of its merge step (merge and the deltas for
    the desired state)."""

    merge_cpu: float = 0.0

    def merge(self) -> None:
        start = time.thread_time()
        try:
            super().merge()
        finally:
            self.merge_cpu += time.thread_time() - start


class TimedAgent(Agent):
    """`Agent` adding up its loop's CPU (thread time): whole rounds, their merge step (the core's
    merge, and the desired state's part, `TimedDesiredLb`)."""

    round_cpu: float = 0.0

    def __init__(self, config: AgentConfig, *, maps: StampedLbMaps) -> None:
        own = PeerTarget(config.cell, None, config.meshapi, config.server_name)
        self.timed_core = TimedCore(config.core(), own)
        self.timed_desired = TimedDesiredLb()
        super().__init__(config, maps=maps, desired=self.timed_desired, core=self.timed_core)

    @property
    def merge_cpu(self) -> float:
        """The core's merge plus landing its deltas in the desired state."""
        return self.timed_core.merge_cpu + self.timed_desired.set_cpu

    async def round(self) -> None:
        start = time.thread_time()
        try:
            await super().round()
        finally:
            self.round_cpu += time.thread_time() - start


class GcTime:
    """The time this process spends in the cyclic garbage collector (a `gc.callbacks` hook)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0  # generation-2 collections
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._start
        self.full += info["generation"] == 2


# --- everything the run creates, and its removal ------------------------------------------


@dataclass
class Child:
    name: str
    process: BaseProcess
    conn: Connection

    def stop(self) -> list[str]:
        if self.process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(("stop",))
            self.process.join(20)
        for end in (self.process.terminate, self.process.kill):
            if self.process.is_alive():
                end()
                self.process.join(5)
        self.conn.close()
        if self.process.is_alive():
            return [f"{self.name} (pid {self.process.pid}) did not exit"]
        return []


@dataclass
class Resources:
    root: Path
    etcds: list[LocalEtcd] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    loader: SockLbLoader | None = None
    maps: StampedLbMaps | None = None

    def spawn(self, name: str, main: Callable[..., Any], *args: Any) -> Child:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that runs gRPC
        ours, theirs = ctx.Pipe()
        process = ctx.Process(
            target=child_entry, args=(theirs, main, *args), name=f"bench-{name}", daemon=True
        )
        child = Child(name, process, ours)
        self.children.append(child)
        # Started with SIGINT ignored (kept across exec): Ctrl-C is the parent's to handle, also
        # while the child is still importing.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            process.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        theirs.close()
        return child

    def release(self) -> list[str]:
        """Remove everything, each step on its own; returns what could not be removed."""
        problems: list[str] = []
        for child in reversed(self.children):
            problems.extend(child.stop())
        for etcd in self.etcds:
            try:
                etcd.stop()
            except Exception as e:
                problems.append(f"etcd pid {etcd.pid}: {e}")
        if self.maps is not None:
            self.maps.close()
        if self.loader is not None:
            try:
                self.loader.unpin()
            except OSError as e:
                problems.append(f"pins of {self.loader.instance}: {e}")
        shutil.rmtree(self.root, ignore_errors=True)
        return problems


def make_pki(root: Path) -> dict[str, str]:
    """A mesh CA and the TLS directories of the run, by name."""
    ca = root / "ca"
    create_ca(trust_domain=TRUST_DOMAIN, out_dir=ca)
    wanted = {
        "alpha-meshapi": ("alpha", Role.MESHAPI, None),
        "beta-meshapi": ("beta", Role.MESHAPI, None),
        "alpha-admin": ("alpha", Role.ADMIN, None),
        "beta-admin": ("beta", Role.ADMIN, None),
        "alpha-agent": ("alpha", Role.AGENT, "a1"),
        "alpha-watcher": ("alpha", Role.AGENT, "w1"),
    }
    for name, (cell, role, node) in wanted.items():
        issue_certificate(ca_dir=ca, cell=cell, role=role, out_dir=root / name, node=node)
    return {name: str(root / name) for name in wanted}


# --- the measurement ----------------------------------------------------------------------


def start_cells(res: Resources) -> dict[str, str]:
    """The mesh PKI and one etcd per cell, under res (released with it); the TLS dirs."""
    tls = make_pki(res.root)
    for cell in CELLS:
        etcd = LocalEtcd(data_dir=res.root / f"etcd-{cell}" / "data")
        res.etcds.append(etcd)  # before start: a half-started one is stopped too
        etcd.start()
    return tls


def ms(values: Sequence[float]) -> dict[str, float]:
    v = [x * 1000 for x in values]
    p99 = statistics.quantiles(v, n=100, method="inclusive")[98]
    return {
        "p50": round(statistics.median(v), 2),
        "p99": round(p99, 2),
        "max": round(max(v), 2),
        "mean": round(statistics.fmean(v), 2),
    }


def late_ms(values: Sequence[float]) -> dict[str, float]:
    """How late the generator issued changes (0 when on time): p50, p99, max in ms."""
    figures = ms(values)
    return {"p50": figures["p50"], "p99": figures["p99"], "max": figures["max"]}


def histogram_view(buckets: Sequence[float], counts: Sequence[int], total: float) -> dict[str, Any]:
    """The agent's own propagation histogram (bucket upper bounds) over some observations."""
    samples = sum(counts)

    def upper(q: float) -> float | None:
        seen = 0
        for bound, count in zip([*buckets, float("inf")], counts, strict=True):
            seen += count
            if seen >= q * samples:
                return None if bound == float("inf") else bound * 1000
        return None

    mean = total / samples * 1000 if samples else None
    return {
        "samples": samples,
        "mean_ms": None if mean is None else round(mean, 2),
        "p50_le_ms": upper(0.5),
        "p99_le_ms": upper(0.99),
    }


@dataclass
class ModeResult:
    """What the measured rounds of one mode observed, added up over the rounds."""

    name: str
    changes: int = 0
    wall: float = 0.0  # seconds from sending the first change to the last one observed
    to_map: list[float] = field(default_factory=list)
    to_watcher: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    rpc: list[float] = field(default_factory=list)  # the write's round trip (admin RPC, etcd put)
    late: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    hist_counts: list[int] = field(default_factory=list)
    hist_total: float = 0.0

    def per_change(self, value: float, *, scale: float = 1000) -> float:
        return round(value * scale / self.changes, 3)


@dataclass
class Harness:
    """The children, the agent and what they observed, seen from this process's event loop.

    `progress` is set on every map apply and every message from a child: waits re-check their
    condition then, instead of polling (which would add to the CPU being measured).
    """

    res: Resources
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    seen: dict[str, float] = field(default_factory=dict)  # watcher: address -> time decoded
    inboxes: list[Inbox] = field(default_factory=list)
    agent: TimedAgent | None = None
    gc_time: GcTime = field(default_factory=GcTime)

    async def until(
        self, done: Callable[[], bool], what: str, *, timeout: float = DRAIN_TIMEOUT
    ) -> None:
        """Wait for done(), with a deadline; fail at once if a child failed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self.progress.clear()
            if done():
                return
            failed = [i.failed for i in self.inboxes if i.failed]
            if failed:
                raise BenchError(f"while waiting for {what}: a child process failed: {failed[0]}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation (SIGTERM,
            # Ctrl-C) that arrives as the event is set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.progress.wait()

    async def start_cells(
        self, tls: dict[str, str], backends: int, services: int
    ) -> dict[str, Any]:
        etcd = {cell: self.res.etcds[i].endpoint for i, cell in enumerate(CELLS)}
        self.cells = self.res.spawn("cells", serve_cells, etcd, tls)
        self.writes = Inbox(self.cells.conn, wake=self.progress.set)
        self.inboxes.append(self.writes)
        self.address: dict[str, str] = (await self.writes.get("ready", timeout=60))[1]
        self.cells.conn.send(("setup", backends, services))
        load_s = (await self.writes.get("loaded", timeout=300))[1]

        def on_event(msg: Message) -> bool:
            if msg[0] != "event":
                return False
            self.seen.setdefault(str(msg[1]), float(msg[2]))
            return True

        child = self.res.spawn(
            "watcher", watch_endpoints, self.address["beta"], tls["alpha-watcher"]
        )
        watch = Inbox(child.conn, on_message=on_event, wake=self.progress.set)
        self.inboxes.append(watch)
        _, listed, list_s = await watch.get("synced", timeout=180)
        if listed != backends + small_total(services):
            raise BenchError(
                f"the watcher listed {listed} endpoints, not {backends + small_total(services)}"
            )
        return {"write_s": round(load_s, 2), "watcher_list_s": round(list_s, 2)}

    async def start_agent(self, tls_dir: str, backends: int, services: int) -> dict[str, Any]:
        """Load the datapath's maps, start the agent; wait until it programmed every backend."""
        self.res.loader = SockLbLoader(
            object_path=OBJECT, instance=f"bench-{uuid.uuid4().hex[:10]}"
        )
        self.res.loader.load()
        self.maps = self.res.maps = StampedLbMaps(
            self.res.loader.maps_dir, on_apply=self.progress.set
        )
        self.services = services
        config = AgentConfig(
            cell="alpha", node="a1", meshapi=self.address["alpha"], tls_dir=Path(tls_dir)
        )
        agent = self.agent = TimedAgent(config, maps=self.maps)
        start = time.monotonic()
        await agent.start()
        await self.until(
            lambda: (
                self.in_service() >= backends + ALPHA_ENDPOINTS
                and self.in_small_services() >= small_total(services)
            ),
            "the initial sync",
            timeout=SYNC_TIMEOUT,
        )
        return {
            "s": round(time.monotonic() - start, 3),
            "backends": self.in_service() + self.in_small_services(),
            "applies": self.maps.applies,
            "rounds": agent.stats.rounds,
            "merges": agent.stats.merges,
        }

    def in_service(self, vip: str = VIP) -> int:
        entry = self.maps.landed.services.get(LbFrontend(IPv4Address(vip), VIP_PORT, IPPROTO_TCP))
        return len(entry.backend_ids) if entry is not None else 0

    def in_small_services(self) -> int:
        return sum(self.in_service(small_vip(i)) for i in range(self.services))

    async def load(
        self, mode: str, first: int, count: int, rate: float, into: ModeResult | None
    ) -> None:
        """Changes first.. of `mode`, open loop at `rate`/s (made by the cells process); wait
        until the agent's maps and the watcher hold them all; add what was seen to `into`."""
        agent = self.agent
        assert agent is not None
        hist = agent.stats.propagation
        hist0, total0 = list(hist.counts), hist.total
        before = self.counters()
        start = time.monotonic()
        self.cells.conn.send(("load", mode, first, count, rate))
        _, _, rows, late, floor = await self.writes.get(
            "done", timeout=count / rate + DRAIN_TIMEOUT
        )
        wanted = [str(address) for address, _, _ in rows]
        if mode != "floor":
            landed, seen = self.maps.landed_at, self.seen
            await self.until(
                lambda: all(a in landed and a in seen for a in wanted),
                f"the {mode} changes in the maps and at the watcher",
            )
        wall = time.monotonic() - start
        after = self.counters()
        if into is None:
            return
        into.changes += count
        into.wall += wall
        into.late.extend(late)
        into.rpc.extend(rpc for _, _, rpc in rows)
        into.floor.extend(floor)
        if mode != "floor":
            into.to_map.extend(self.maps.landed_at[a] - t0 for a, t0, _ in rows)
            into.to_watcher.extend(self.seen[a] - t0 for a, t0, _ in rows)
        for name, value in after.items():
            into.cpu[name] = into.cpu.get(name, 0.0) + value - before[name]
        counts = [a - b for a, b in zip(hist.counts, hist0, strict=True)]
        into.hist_counts = [
            a + b for a, b in zip(into.hist_counts or [0] * len(counts), counts, strict=True)
        ]
        into.hist_total += hist.total - total0

    def counters(self) -> dict[str, float]:
        """Cumulative CPU seconds (and counts) of this process and of the agent's parts."""
        agent, maps = self.agent, self.maps
        assert agent is not None
        return {
            "process": time.process_time(),
            "loop_thread": time.thread_time(),
            "rounds": agent.round_cpu,
            "merge": agent.merge_cpu,
            "desired": agent.timed_desired.set_cpu,
            "maps_apply": maps.apply_cpu,
            "bench_stamp": maps.stamp_cpu,
            "gc": self.gc_time.seconds,
            "gc_full": self.gc_time.full,
            "round_count": agent.stats.rounds,
            "apply_count": maps.applies,
            "diff_keys": maps.diff_keys,
        }


def agent_figures(mode: ModeResult, idle: ModeResult, floor: dict[str, float]) -> dict[str, Any]:
    """Latency and CPU per change of an agent mode; idle: the floor rounds (agent idle)."""
    cpu: dict[str, float] = {"phase_s": round(mode.wall, 2)}
    for name in ("process", "loop_thread", "rounds"):
        idle_share = idle.cpu[name] / idle.wall * mode.wall
        cpu[f"{name}_ms_per_change"] = mode.per_change(mode.cpu[name])
        cpu[f"{name}_idle_ms_per_change"] = mode.per_change(idle_share)
        if name == "process":
            cpu["process_net_ms_per_change"] = mode.per_change(mode.cpu[name] - idle_share)
    for name in ("merge", "desired", "maps_apply", "gc", "bench_stamp"):
        cpu[f"{name}_ms_per_change"] = mode.per_change(mode.cpu[name])
    for name in ("gc_full", "round_count", "apply_count", "diff_keys"):
        cpu[f"{name}_per_change"] = mode.per_change(mode.cpu[name], scale=1)
    to_map, to_watcher = ms(mode.to_map), ms(mode.to_watcher)
    return {
        "samples": len(mode.to_map),
        "write_to_map_ms": to_map,
        "write_to_watcher_ms": to_watcher,
        "write_rpc_ms": ms(mode.rpc),
        "generator_late_ms": late_ms(mode.late),
        "map_vs_floor": ratio(to_map, floor),
        "watcher_vs_floor": ratio(to_watcher, floor),
        "agent_minus_watcher_median_ms": round(
            statistics.median(a - w for a, w in zip(mode.to_map, mode.to_watcher, strict=True))
            * 1000,
            2,
        ),
        "agent_histogram": histogram_view(Histogram().buckets, mode.hist_counts, mode.hist_total),
        "cpu": cpu,
    }


async def measure(res: Resources, tls: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    run = Harness(res)
    gc.callbacks.append(run.gc_time)
    results = {mode: ModeResult(mode) for mode in MODES}
    try:
        load = await run.start_cells(tls, args.backends, args.services)
        initial = await run.start_agent(tls["alpha-agent"], args.backends, args.services)
        made = dict.fromkeys(MODES, 0)  # changes made so far, per mode
        for mode in MODES:
            await run.load(mode, made[mode], args.warmup, args.rate, None)
            made[mode] += args.warmup
        per_round = max(1, args.samples // ROUNDS)
        wall = time.monotonic()
        for r in range(ROUNDS):
            for mode in [*MODES[r % 3 :], *MODES[: r % 3]]:
                await run.load(mode, made[mode], per_round, args.rate, results[mode])
                made[mode] += per_round
        wall = time.monotonic() - wall
        expected = args.backends + ALPHA_ENDPOINTS + made["big"]
        if run.in_service() != expected:
            raise BenchError(f"bench/big has {run.in_service()} backends, not {expected}")
        expected = small_total(args.services) + made["realistic"]
        if run.in_small_services() != expected:
            raise BenchError(f"the small services have {run.in_small_services()}, not {expected}")
    finally:
        gc.callbacks.remove(run.gc_time)
        if run.agent is not None:
            await run.agent.stop()
        for inbox in run.inboxes:
            inbox.close()
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, raise_on_sigterm)

    idle = results["floor"]
    floor = ms(idle.floor)
    return {
        "rate_per_s": args.rate,
        "rounds": ROUNDS,
        "phase_s": round(wall, 2),
        "cell": {
            "big": f"1 service, {args.backends} beta + {ALPHA_ENDPOINTS} alpha endpoints",
            "realistic": f"{args.services} services x 2-5 endpoints "
            f"({small_total(args.services)} in beta)",
        },
        "load": load,
        "initial_sync": initial,
        "floor": {
            "samples": len(idle.floor),
            "put_to_event_ms": floor,
            "put_rpc_ms": ms(idle.rpc),
            "generator_late_ms": late_ms(idle.late),
            "idle_process_cpu_ms_per_s": round(idle.cpu["process"] / idle.wall * 1000, 2),
        },
        "realistic": agent_figures(results["realistic"], idle, floor),
        "big": agent_figures(results["big"], idle, floor),
    }


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="changes per second")
    parser.add_argument("--samples", type=int, default=1000, help="measured changes per mode")
    parser.add_argument("--backends", type=int, default=10_000, help="beta endpoints of bench/big")
    parser.add_argument(
        "--services", type=int, default=2000, help="small global services (2-5 endpoints)"
    )
    parser.add_argument("--warmup", type=int, default=50, help="changes per mode before measuring")
    parser.add_argument(
        "--quick", action="store_true", help="200 samples a mode, 1,000 backends, 200 services"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.backends, args.services = 200, 1000, 200
    if (
        args.rate <= 0
        or args.backends < 1
        or args.services < 1
        or args.samples < ROUNDS * 2
        or args.warmup < 1
    ):
        parser.error(
            f"need --rate > 0, --backends >= 1, --services >= 1, --samples >= {ROUNDS * 2}, "
            "--warmup >= 1"
        )
    changes = args.warmup + args.samples
    if (
        args.backends + changes > SMALL_BASE
        or SMALL_BASE + small_total(args.services) + changes > 65_000
    ):
        parser.error("beta's endpoints must fit its pod CIDR 10.2.0.0/16")
    if args.services > SMALL_VIPS.num_addresses - 2:
        parser.error(f"at most {SMALL_VIPS.num_addresses - 2} small services ({SMALL_VIPS})")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise BenchError("run as root (BPF maps)")
    if not OBJECT.is_file():
        raise BenchError(f"{OBJECT}: no BPF object (run `make setup`)")
    configure_logging("warning")  # structlog to stderr: stdout carries the JSON line only
    res = Resources(Path(tempfile.mkdtemp(prefix="cellmesh-bench-")))
    with interruptible("agent_propagation", res.release):
        tls = start_cells(res)
        figures = asyncio.run(measure(res, tls, args))
    return {
        "backends": args.backends,
        "alpha_backends": ALPHA_ENDPOINTS,
        "services": args.services,
        "samples_per_mode": args.samples,
        "warmup_per_mode": args.warmup,
        **figures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return bench_main("agent_propagation", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
