"""Node agent benchmark (issue 4): propagation latency write → BPF map, and CPU per change.

Run as root from the repository: ``.venv/bin/python bench/agent_propagation.py [--backends 10000
--changes 200 --warmup 5]``; prints ONE JSON line.

Three processes and two etcds, all on loopback, so that this process's CPU is the agent's:

- this one: the alpha node agent (`Agent`, in process) over real pinned maps (`bpf/sock_lb.o`
  loaded, never attached), wrapped to timestamp every map apply;
- ``cells``: the meshapis of alpha and beta (in-process `MeshApiApp`s, one etcd each), which
  also make every admin write;
- ``watcher``: a plain `ListWatcher` of beta's endpoints with an alpha agent certificate, the
  baseline: write → etcd → meshapi watch cache → gRPC stream → decoded record, no agent logic.

Set-up: the cells connected both ways, a global service bench/big (VIP 172.20.0.10:80/TCP, never
dialled) with --backends endpoints in beta and a few in alpha. Then, one at a time, --warmup and
--changes times: add a beta endpoint (``updated_at`` = now) and wait until both the watcher has
decoded it and the agent's maps hold it in the service. Then an idle period as long as the
measured changes took, for the CPU baseline. Timestamps are CLOCK_MONOTONIC (`time.monotonic`),
one clock for all processes on Linux.

CPU: this process's `process_time` (the agent, its gRPC threads, and the bench's own pipe
reading) and the event loop thread's `thread_time`; inside it, the agent's rounds, their merge
step, `DesiredLb.set_frontends` / `update_frontend` and `LbMaps.apply` (thin subclasses add
timers, nothing else), and the cyclic GC (`gc.callbacks`). Everything it starts is stopped and
removed in ``finally``, also on Ctrl-C or SIGTERM. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from harness import BenchError, bench_main, interruptible, raise_on_sigterm

from bpf.layout import IPPROTO_TCP
from bpf.lbstate import BackendId, LbDiff
from bpf.lbstate import Frontend as LbFrontend
from bpf.loader import SockLbLoader
from bpf.pinned_maps import PinnedLbMaps
from certs import Role, create_ca, issue_certificate
from meshapi.app import MeshApiApp, MeshApiConfig
from meshcore.client import MeshClient
from meshcore.lbpolicy import MergedBackend, ServiceRef
from meshcore.localetcd import LocalEtcd
from meshcore.logs import configure_logging
from meshcore.model import Endpoint, Kind, Peer, Service
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
ALPHA_ENDPOINTS = 3
WRITE_BATCH = 500  # endpoints per admin write while loading
HEARTBEAT_INTERVAL = 5.0  # meshapi's default
CHANGE_TIMEOUT = 30.0
SYNC_TIMEOUT = 300.0  # the initial sync merges the growing service once per listing chunk


# --- records ------------------------------------------------------------------------------


def pod_address(cell: str, n: int) -> IPv4Address:
    return IPv4Network(CELLS[cell][1]).network_address + 1 + n


def endpoint(cell: str, n: int, *, updated_at: float = 0.0) -> Endpoint:
    return Endpoint(
        cell=cell,
        namespace=NAMESPACE,
        service=SERVICE,
        address=pod_address(cell, n),
        node="n1",
        ports=[EndpointPort(name="http", port=TARGET_PORT)],
        updated_at=updated_at,
    )


def big_service(cell: str) -> Service:
    return Service.model_validate(
        {
            "cell": cell,
            "namespace": NAMESPACE,
            "name": SERVICE,
            "frontends": [{"name": "http", "vip": ip_address(VIP), "port": VIP_PORT}],
            "global": True,
            "shared": True,
            "affinity": "none",
        }
    )


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


# --- the cells process: both meshapis, and every admin write ------------------------------


async def serve_cells(conn: Connection, etcd: dict[str, str], tls: dict[str, str]) -> None:
    inbox = Inbox(conn)
    apps: dict[str, MeshApiApp] = {}
    admins: dict[str, MeshClient] = {}
    try:
        for cell, (cell_id, pods, nodes) in CELLS.items():
            app = apps[cell] = MeshApiApp(
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
        address = {cell: f"127.0.0.1:{app.grpc_port}" for cell, app in apps.items()}
        for cell in CELLS:
            admins[cell] = MeshClient(address[cell], Path(tls[f"{cell}-admin"]))
        conn.send(("ready", address))
        while True:
            msg = await inbox.queue.get()
            if msg[0] == "setup":
                start = time.monotonic()
                await load_cells(apps, admins, address, backends=int(msg[1]))
                conn.send(("loaded", time.monotonic() - start))
            elif msg[0] == "add":
                t0 = time.monotonic()
                record = endpoint("beta", int(msg[1]), updated_at=time.time())
                await admins["beta"].write(puts=[record])
                conn.send(("added", str(record.address), t0, time.monotonic()))
            else:  # "stop" or EOF
                break
    finally:
        inbox.close()
        for client in admins.values():
            await client.close()
        for app in apps.values():
            await app.stop()


async def load_cells(
    apps: dict[str, MeshApiApp],
    admins: dict[str, MeshClient],
    address: dict[str, str],
    *,
    backends: int,
) -> None:
    """Peers both ways, bench/big in both cells, its endpoints; wait for beta's watch cache."""
    for cell, other in (("alpha", "beta"), ("beta", "alpha")):
        peer = Peer(cell=cell, name=other, id=CELLS[other][0], address=address[other])
        await admins[cell].write(puts=[big_service(cell), peer])
    await admins["alpha"].write(puts=[endpoint("alpha", n) for n in range(ALPHA_ENDPOINTS)])
    revision = 0
    for first in range(0, backends, WRITE_BATCH):
        batch = [endpoint("beta", n) for n in range(first, min(backends, first + WRITE_BATCH))]
        revision = await admins["beta"].write(puts=batch)
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
    (thread time) spent in `apply`."""

    SMALL = 64

    def __init__(self, maps_dir: Path, *, on_apply: Callable[[], None]) -> None:
        super().__init__(maps_dir)
        self.landed_at: dict[str, float] = {}
        self.applies = 0
        self.diff_keys = 0  # backends + services of the applied diffs
        self.apply_cpu = 0.0
        self._waiting: dict[BackendId, str] = {}  # backend id -> address, until a service has it
        self._on_apply = on_apply

    def apply(self, diff: LbDiff) -> None:
        start = time.thread_time()
        super().apply(diff)
        now = time.monotonic()
        self.apply_cpu += time.thread_time() - start
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


def histogram_view(before: Histogram, after: Histogram) -> dict[str, Any]:
    """The agent's own propagation histogram (bucket upper bounds), between two snapshots."""
    counts = [a - b for a, b in zip(after.counts, before.counts, strict=True)]
    samples = sum(counts)

    def upper(q: float) -> float | None:
        seen = 0
        for bound, count in zip([*after.buckets, float("inf")], counts, strict=True):
            seen += count
            if seen >= q * samples:
                return None if bound == float("inf") else bound * 1000
        return None

    mean = (after.total - before.total) / samples * 1000 if samples else None
    return {
        "samples": samples,
        "mean_ms": None if mean is None else round(mean, 2),
        "p50_le_ms": upper(0.5),
        "p99_le_ms": upper(0.99),
    }


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

    async def until(
        self, done: Callable[[], bool], what: str, *, timeout: float = CHANGE_TIMEOUT
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

    async def start_cells(self, tls: dict[str, str], backends: int) -> dict[str, Any]:
        etcd = {cell: self.res.etcds[i].endpoint for i, cell in enumerate(CELLS)}
        self.cells = self.res.spawn("cells", serve_cells, etcd, tls)
        self.writes = Inbox(self.cells.conn, wake=self.progress.set)
        self.inboxes.append(self.writes)
        self.address: dict[str, str] = (await self.writes.get("ready", timeout=60))[1]
        self.cells.conn.send(("setup", backends))
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
        if listed != backends:
            raise BenchError(f"the watcher listed {listed} endpoints, not {backends}")
        return {"write_s": round(load_s, 2), "watcher_list_s": round(list_s, 2)}

    async def start_agent(self, tls_dir: str, backends: int) -> dict[str, Any]:
        """Load the datapath's maps, start the agent; wait until it programmed every backend."""
        self.res.loader = SockLbLoader(
            object_path=OBJECT, instance=f"bench-{uuid.uuid4().hex[:10]}"
        )
        self.res.loader.load()
        self.maps = self.res.maps = StampedLbMaps(
            self.res.loader.maps_dir, on_apply=self.progress.set
        )
        config = AgentConfig(
            cell="alpha", node="a1", meshapi=self.address["alpha"], tls_dir=Path(tls_dir)
        )
        agent = self.agent = TimedAgent(config, maps=self.maps)
        start = time.monotonic()
        await agent.start()
        await self.until(
            lambda: self.in_service() >= backends, "the initial sync", timeout=SYNC_TIMEOUT
        )
        return {
            "s": round(time.monotonic() - start, 3),
            "backends": self.in_service(),
            "applies": self.maps.applies,
            "rounds": agent.stats.rounds,
            "merges": agent.stats.merges,
        }

    def in_service(self) -> int:
        entry = self.maps.landed.services.get(LbFrontend(IPv4Address(VIP), VIP_PORT, IPPROTO_TCP))
        return len(entry.backend_ids) if entry is not None else 0

    async def change(self, n: int) -> tuple[float, float, float]:
        """Add beta endpoint n: (write → map, write → watcher, write RPC) in seconds."""
        where = str(pod_address("beta", n))
        self.cells.conn.send(("add", n))
        await self.until(
            lambda: where in self.maps.landed_at and where in self.seen,
            f"backend {where} in the maps and at the watcher",
        )
        _, written, t0, t1 = await self.writes.get("added", timeout=CHANGE_TIMEOUT)
        if written != where:
            raise BenchError(f"wrote {written}, expected {where}")
        return self.maps.landed_at[where] - t0, self.seen[where] - t0, t1 - t0

    def counters(self, gc_time: GcTime) -> dict[str, float]:
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
            "gc": gc_time.seconds,
            "gc_full": gc_time.full,
            "round_count": agent.stats.rounds,
            "apply_count": maps.applies,
            "diff_keys": maps.diff_keys,
        }


async def measure(res: Resources, tls: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    run = Harness(res)
    gc_time = GcTime()
    gc.callbacks.append(gc_time)
    try:
        load = await run.start_cells(tls, args.backends)
        initial = await run.start_agent(tls["alpha-agent"], args.backends + ALPHA_ENDPOINTS)
        assert run.agent is not None
        first = args.backends
        for n in range(first, first + args.warmup):
            await run.change(n)
        first += args.warmup

        histogram = copy.deepcopy(run.agent.stats.propagation)
        before = run.counters(gc_time)
        wall = time.monotonic()
        results = [await run.change(n) for n in range(first, first + args.changes)]
        wall = time.monotonic() - wall
        busy = {k: v - before[k] for k, v in run.counters(gc_time).items()}
        agent_view = histogram_view(histogram, run.agent.stats.propagation)

        before = run.counters(gc_time)
        await asyncio.sleep(wall)  # idle as long: heartbeats and ticks only
        idle = {k: v - before[k] for k, v in run.counters(gc_time).items()}
        expected = args.backends + ALPHA_ENDPOINTS + args.warmup + args.changes
        if run.in_service() != expected:
            raise BenchError(f"the service has {run.in_service()} backends, not {expected}")
    finally:
        gc.callbacks.remove(gc_time)
        if run.agent is not None:
            await run.agent.stop()
        for inbox in run.inboxes:
            inbox.close()
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, raise_on_sigterm)

    to_map, to_event, rpc = zip(*results, strict=True)
    agent_ms, watch_ms = ms(to_map), ms(to_event)
    n = int(args.changes)

    def per_change(figures: dict[str, float], name: str, *, scale: float = 1000) -> float:
        return round(figures[name] * scale / n, 3)

    cpu: dict[str, float] = {"phase_s": round(wall, 2)}
    for name in ("process", "loop_thread", "rounds"):
        cpu[f"{name}_ms_per_change"] = per_change(busy, name)
        cpu[f"{name}_idle_ms_per_change"] = per_change(idle, name)
        if name == "process":
            cpu["process_net_ms_per_change"] = per_change(
                {"net": busy["process"] - idle["process"]}, "net"
            )
    for name in ("merge", "desired", "maps_apply", "gc"):
        cpu[f"{name}_ms_per_change"] = per_change(busy, name)
    for name in ("gc_full", "round_count", "apply_count", "diff_keys"):
        cpu[f"{name}_per_change"] = per_change(busy, name, scale=1)
    return {
        "load": load,
        "initial_sync": initial,
        "write_to_map_ms": agent_ms,
        "write_to_event_ms": watch_ms,
        "write_rpc_ms": ms(rpc),
        "ratio_p50": round(agent_ms["p50"] / watch_ms["p50"], 2),
        "ratio_p99": round(agent_ms["p99"] / watch_ms["p99"], 2),
        "agent_minus_watcher_median_ms": round(
            statistics.median(a - w for a, w in zip(to_map, to_event, strict=True)) * 1000, 2
        ),
        "agent_histogram": agent_view,
        "cpu": cpu,
    }


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", type=int, default=10_000, help="endpoints in beta")
    parser.add_argument("--changes", type=int, default=200, help="measured changes")
    parser.add_argument("--warmup", type=int, default=5, help="changes before measuring")
    args = parser.parse_args(argv)
    if args.backends < 1 or args.changes < 2 or args.warmup < 0:
        parser.error("need --backends >= 1, --changes >= 2, --warmup >= 0")
    if args.backends + args.warmup + args.changes > 65_000:
        parser.error("beta's endpoints must fit its pod CIDR 10.2.0.0/16")
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
        "changes": args.changes,
        "warmup": args.warmup,
        **figures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return bench_main("agent_propagation", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
