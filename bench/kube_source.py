"""meshapi's Kubernetes source (issue 13): object change → etcd record, and the initial listing.

Run from the repository: ``.venv/bin/python bench/kube_source.py [--rate 200 --samples 1000
--listing-services 2000] [--quick] [--meshapi-gc-freeze]``; prints ONE JSON line. Needs no
root; --quick: 200 samples a mode, 500 listed services (~12 s, ~26 s without).

Two processes, all on loopback, one real etcd:

- this one: the Kubernetes API double (`KubeApiDouble`, real HTTP, written through its direct
  `put`), the load generator, and raw etcd watches (`EtcdStore.watch_prefix`) that timestamp
  every record as etcd reports it;
- ``meshapi``: an in-process `MeshApiApp` with ``source="kubernetes"`` (the real
  `kubernetes_asyncio` client against the double), so its CPU is its own.

1. Initial listing: the double holds --listing-services Services with one 2-endpoint
   EndpointSlice each; the time from the meshapi's start (`MeshApiApp.start`) to the last of its
   four source canaries in etcd, and the records in etcd then. Floor: the same number of records
   (their real encoding) written straight into etcd in batches, as meshapi's writer batches.
2. Propagation, open loop at --rate changes/s, in rounds that rotate the order of three modes
   (so a noisy shared machine hits each alike): ``realistic`` flips one endpoint's ``ready`` in
   one of 500 Services x 4 endpoints (one slice each); ``big`` flips one in a Service of 1,000
   endpoints over 10 slices of 100; ``floor`` is a raw etcd put of an endpoint record and its
   watch event, the least any path through etcd can take. A sample is timed from the moment the
   change exists (the double's `put` returned; the floor's put is issued) to the watch event of
   the endpoint's key, both on CLOCK_MONOTONIC in this process. Per mode: p50/p99, the etcd
   writes per change (watch events outside heartbeats), meshapi's txns, CPU and cyclic-GC time
   per change and its longest GC pause, and this process's CPU per change (the double's part).
   The 2,000 listed Services stay in the cell meanwhile.
3. Restart: a new meshapi process over the same etcd and API: start → canaries, and the etcd
   writes it made (every record adopted as stored: canaries and the cell record only).

meshapi freezes its heap once its initial sync is in, as the ``meshapi`` process does
(``meshapi.main.freeze_heap_once_synced``). ``--meshapi-gc-freeze`` is an experiment on top:
it freezes again once the whole cell (the services added after the start too) is loaded. This
process freezes its own heap (the double's objects) in every run: its pauses are not meshapi's.

Everything it starts is stopped and removed in ``finally``, also on Ctrl-C or SIGTERM. See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import gc
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_network
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agent_propagation import Inbox, Resources, ms
from harness import BenchError, bench_main, interruptible, paced, raise_on_sigterm, ratio

from certs import Role, create_ca, issue_certificate
from meshapi.app import MeshApiApp, MeshApiConfig
from meshapi.etcd_adapter import EtcdStore
from meshapi.main import freeze_heap_once_synced
from meshcore.localetcd import LocalEtcd
from meshcore.logs import configure_logging
from meshcore.model import (
    PREFIX,
    Endpoint,
    Kind,
    Service,
    encode_record,
    endpoint_key,
    heartbeat_key,
    synced_key,
)
from meshcore.model.records import EndpointPort
from meshctl.lab.kubeapi import KubeApiDouble

CELL, CELL_ID = "alpha", 1
POD_CIDR, NODE_CIDR = "10.1.0.0/16", "192.168.1.0/24"
NAMESPACE = "bench"
FIRST_POD = IPv4Address("10.1.0.1")
FIRST_VIP = IPv4Address("10.96.0.10")
TARGET_PORT = 8080
SOURCE_KINDS = (Kind.SERVICE, Kind.ENDPOINT, Kind.NODE, Kind.PEER)
REALISTIC = (500, 4)  # services x endpoints, one slice each
BIG = (10, 100)  # slices x endpoints, one service
FLOOR_PREFIX = "floor/"  # outside meshapi's prefix: its watch cache never sees these
WRITE_CHUNK = 1000  # records per EtcdStore.write of the listing floor (meshapi's batch size)
MODES = ("floor", "realistic", "big")
ROUNDS = 4
WARMUP = 50  # samples per mode before measuring
DRAIN_TIMEOUT = 30.0
LISTING_TIMEOUT = 120.0


# --- Kubernetes objects ---------------------------------------------------------------------


def pod_address(n: int) -> str:
    return str(FIRST_POD + n)


def service_object(name: str, n: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": str(FIRST_VIP + n),
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": TARGET_PORT}],
        },
    }


def slice_object(service: str, name: str, first: int, count: int) -> dict[str, Any]:
    """A slice as the EndpointSlice controller writes it: pod refs, node, zone, conditions."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [pod_address(n)],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": f"n{n % 4 + 1}",
                "zone": "z1",
                "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": f"{name}-p{n}"},
            }
            for n in range(first, first + count)
        ],
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
    }


def node_object(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": f"n{i}"},
        "spec": {"podCIDR": f"10.1.{200 + i}.0/24", "podCIDRs": [f"10.1.{200 + i}.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.1.{10 + i}"}]},
    }


def namespace_object() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def floor_records(services: int, per: int) -> list[tuple[str, bytes]]:
    """What meshapi writes for that many services of that many endpoints: the real encoding."""
    out: list[tuple[str, bytes]] = []
    n = 0
    for i in range(services):
        svc = Service.model_validate(
            {
                "cell": CELL,
                "namespace": NAMESPACE,
                "name": f"s{i}",
                "frontends": [{"name": "http", "vip": FIRST_VIP + i, "port": 80}],
                "global": False,
                "shared": True,
                "affinity": "none",
            }
        )
        out.append((FLOOR_PREFIX + svc.key(), encode_record(svc)))
        for _ in range(per):
            ep = floor_endpoint(f"s{i}", n)
            out.append((FLOOR_PREFIX + ep.key(), encode_record(ep)))
            n += 1
    return out


def floor_endpoint(service: str, n: int, *, ready: bool = True) -> Endpoint:
    return Endpoint(
        cell=CELL,
        namespace=NAMESPACE,
        service=service,
        address=pod_address(n),
        node=f"n{n % 4 + 1}",
        ports=[EndpointPort(name="http", port=TARGET_PORT)],
        ready=ready,
        updated_at=time.time(),
    )


# --- the meshapi process ------------------------------------------------------------------


async def serve_meshapi(conn: Connection, etcd: str, tls_dir: str, kubeconfig: str) -> None:
    """Start a Kubernetes-sourced meshapi when told; report its writer's and CPU counters."""
    inbox = Inbox(conn)
    app = MeshApiApp(
        MeshApiConfig(
            cell=CELL,
            cell_id=CELL_ID,
            pod_cidrs=(ip_network(POD_CIDR),),
            node_cidrs=(ip_network(NODE_CIDR),),
            etcd_endpoints=(etcd,),
            listen="127.0.0.1:0",
            tls_dir=Path(tls_dir),
            http="127.0.0.1:0",
            source="kubernetes",
            kubeconfig=Path(kubeconfig),
            kube_namespace="cellmesh",
        )
    )
    started = False
    freezer: asyncio.Task[None] | None = None
    gc_time = GcPauses()
    gc.callbacks.append(gc_time)
    try:
        conn.send(("imported",))
        msg = await inbox.queue.get()
        if msg[0] != "start":
            return
        t0 = time.monotonic()
        started = True
        await app.start()
        # As the meshapi process does (meshapi.main): freeze the heap once the sync is in.
        freezer = asyncio.create_task(freeze_heap_once_synced(app))
        conn.send(("started", t0, time.monotonic()))
        while True:
            msg = await inbox.queue.get()
            if msg[0] == "freeze":  # --meshapi-gc-freeze: freeze again, the whole cell loaded
                gc.collect()
                gc.freeze()
                conn.send(("frozen", gc.get_freeze_count()))
                continue
            if msg[0] != "stats":
                break  # "stop" or EOF
            assert app.source is not None
            conn.send(
                (
                    "stats",
                    {
                        "cpu": time.process_time(),
                        "txns": app.writer.stats.txns,
                        "ops": app.writer.stats.ops,
                        "bad": len(app.source.state.bad),
                        "gc_s": gc_time.seconds,
                        "gc_max": gc_time.max,
                        "gc_full": gc_time.full,
                        "frozen": gc.get_freeze_count(),
                    },
                )
            )
            gc_time.max = 0.0  # the longest pause between two reads
    finally:
        inbox.close()
        if freezer is not None:
            freezer.cancel()
        if started:
            await app.stop()


class GcPauses:
    """The cyclic GC's time (a `gc.callbacks` hook): total, longest pause, full collections."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.max = 0.0
        self.full = 0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        pause = time.perf_counter() - self._start
        self.seconds += pause
        self.max = max(self.max, pause)
        self.full += info["generation"] == 2


# --- this process: the double, the load, the watches ----------------------------------------


@dataclass
class Mode:
    """One kind of change: how to make sample k, where its latencies and counters go."""

    name: str
    make: Callable[[int], str]  # makes change k, returns the etcd key it must show up as
    samples: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)  # how late the generator issued a change
    changes: int = 0
    events: int = 0  # etcd watch events while this mode ran (heartbeats excluded)
    cpu: float = 0.0  # meshapi's CPU seconds while this mode ran
    txns: int = 0
    gc: float = 0.0  # meshapi's cyclic GC seconds while this mode ran
    gc_full: int = 0
    frozen: int = 0  # meshapi's gc.get_freeze_count() at the end of the mode
    gc_max: float = 0.0  # meshapi's longest GC pause
    own_cpu: float = 0.0  # this process's CPU (the double and the load) while this mode ran
    counter: int = 0


@dataclass
class Run:
    res: Resources
    api: KubeApiDouble
    store: EtcdStore
    pending: dict[str, deque[tuple[float, Mode | None]]] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)  # first event time per watched key
    current: Mode | None = None
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    inbox: Inbox | None = None
    watch_failed: str | None = None
    floor_writes: set[asyncio.Task[int]] = field(default_factory=set)

    # -- watches ---------------------------------------------------------------------------

    async def watch(self, prefix: str, revision: int) -> None:
        heartbeat = heartbeat_key(CELL)
        try:
            async for batch in self.store.watch_prefix(prefix, start_revision=revision):
                now = time.monotonic()
                for event in batch.events:
                    key = event.key
                    if key == heartbeat:
                        continue
                    self.seen.setdefault(key, now)
                    if self.current is not None:
                        self.current.events += 1
                    waiting = self.pending.get(key)
                    if waiting:
                        t0, mode = waiting.popleft()
                        if not waiting:
                            del self.pending[key]
                        if mode is not None:
                            mode.samples.append(now - t0)
                self.progress.set()
        except Exception as e:
            self.watch_failed = f"etcd watch of {prefix}: {e}"
            self.progress.set()
            raise

    async def until(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self.progress.clear()
            if done():
                return
            if self.watch_failed:
                raise BenchError(self.watch_failed)
            if self.inbox is not None and self.inbox.failed:
                raise BenchError(f"while waiting for {what}: meshapi failed: {self.inbox.failed}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self.progress.wait()

    async def start_meshapi(self, etcd: str, tls_dir: str, kubeconfig: str) -> tuple[float, float]:
        """Spawn a meshapi process, start its app; (start time, time `start` returned)."""
        child = self.res.spawn("meshapi", serve_meshapi, etcd, tls_dir, kubeconfig)
        self.inbox = Inbox(child.conn, wake=self.progress.set)
        await self.inbox.get("imported", timeout=60)
        child.conn.send(("start",))
        _, t0, started = await self.inbox.get("started", timeout=60)
        return float(t0), float(started)

    async def stop_meshapi(self) -> None:
        """Stop the meshapi process (before the API double: it would log its retries)."""
        if self.inbox is not None:
            self.inbox.close()
            self.inbox = None
        if self.res.children:
            problems = await asyncio.to_thread(self.res.children[-1].stop)
            if problems:
                raise BenchError(problems[0])

    async def meshapi_stats(self) -> dict[str, Any]:
        assert self.inbox is not None
        self.res.children[-1].conn.send(("stats",))
        return dict((await self.inbox.get("stats", timeout=30))[1])

    # -- the changes -----------------------------------------------------------------------

    def expect(self, key: str, t0: float, mode: Mode | None) -> None:
        self.pending.setdefault(key, deque()).append((t0, mode))

    async def load(self, mode: Mode, count: int, rate: float, *, measured: bool) -> None:
        """`count` changes of `mode` at `rate`/s, open loop; then wait for every one in etcd."""
        self.current = mode if measured else None
        before = await self.meshapi_stats() if measured else None
        own = time.process_time()
        async for _, late in paced(count, rate):
            k = mode.counter
            mode.counter += 1
            key = mode.make(k)
            if measured:
                mode.lag.append(late)
                mode.changes += 1
            self.expect(key, time.monotonic(), mode if measured else None)
        await self.until(lambda: not self.pending, f"{mode.name} changes in etcd", DRAIN_TIMEOUT)
        if self.floor_writes:
            await asyncio.gather(*self.floor_writes)
        if before is not None:
            after = await self.meshapi_stats()
            mode.cpu += after["cpu"] - before["cpu"]
            mode.txns += after["txns"] - before["txns"]
            mode.gc += after["gc_s"] - before["gc_s"]
            mode.gc_full += after["gc_full"] - before["gc_full"]
            mode.gc_max = max(mode.gc_max, after["gc_max"])
            mode.frozen = after["frozen"]
            mode.own_cpu += time.process_time() - own
        self.current = None


def realistic_mode(run: Run, slices: dict[str, dict[str, Any]]) -> Mode:
    services, per = REALISTIC

    def make(k: int) -> str:
        i, j = k % services, (k // services) % per
        return flip(run.api, slices[f"r{i}"], f"r{i}", j)

    return Mode("realistic", make)


def big_mode(run: Run, slices: dict[str, dict[str, Any]]) -> Mode:
    count, per = BIG

    def make(k: int) -> str:
        i, j = k % count, (k // count) % per
        return flip(run.api, slices[f"big-{i}"], "big", j)

    return Mode("big", make)


def floor_mode(run: Run) -> Mode:
    services, per = REALISTIC
    values: dict[bool, list[tuple[str, bytes]]] = {}
    for ready in (False, True):
        values[ready] = [
            (FLOOR_PREFIX + e.key(), encode_record(e))
            for e in (
                floor_endpoint(f"r{n // per}", 50_000 + n, ready=ready)
                for n in range(services * per)
            )
        ]

    def make(k: int) -> str:
        key, value = values[(k // (services * per)) % 2 == 1][k % (services * per)]
        task = asyncio.create_task(run.store.write(puts=[(key, value)]))
        run.floor_writes.add(task)
        task.add_done_callback(run.floor_writes.discard)
        return key

    return Mode("floor", make)


def flip(api: KubeApiDouble, obj: dict[str, Any], service: str, j: int) -> str:
    """Toggle endpoint j's ``ready`` in the slice and put it; the etcd key it must show up as.

    Our copy `obj` is updated by replacing, never mutating, what an earlier put was given: the
    double deep-copies what it stores (a deep copy here too would double the load generator's
    cost, which is not what is measured)."""
    endpoints = list(obj["endpoints"])
    old = endpoints[j]
    ready = not old["conditions"]["ready"]
    endpoints[j] = {**old, "conditions": {"ready": ready, "serving": ready, "terminating": False}}
    obj["endpoints"] = endpoints
    api.put({**obj})
    return endpoint_key(CELL, NAMESPACE, service, old["addresses"][0])


# --- the phases ---------------------------------------------------------------------------


async def listing_floor(store: EtcdStore, services: int, per: int) -> dict[str, Any]:
    records = floor_records(services, per)
    start = time.monotonic()
    for i in range(0, len(records), WRITE_CHUNK):
        await store.write(puts=records[i : i + WRITE_CHUNK])
    return {"records": len(records), "s": round(time.monotonic() - start, 3)}


async def count_records(store: EtcdStore) -> int:
    n = 0
    for kind in (Kind.SERVICE, Kind.ENDPOINT):
        kvs, _ = await store.list_prefix(f"{PREFIX}{kind.value}/{CELL}/")
        n += len(kvs)
    return n


async def measure(res: Resources, tls_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    etcd = res.etcds[0].endpoint
    api = KubeApiDouble(history=20_000)
    store = EtcdStore([etcd], timeout=30.0)
    watches: list[asyncio.Task[None]] = []
    run: Run | None = None
    try:
        await api.start()
        await store.connect()
        run = Run(res, api, store)
        kubeconfig = api.write_kubeconfig(res.root / "kubeconfig")
        revision = await store.current_revision()
        watches.append(asyncio.create_task(run.watch(PREFIX, revision + 1)))

        # 1. The initial listing, and its floor (not watched: this process stays idle).
        services, per = args.listing_services, 2
        floor = await listing_floor(store, services, per)
        revision = await store.current_revision()
        watches.append(asyncio.create_task(run.watch(FLOOR_PREFIX, revision + 1)))
        api.put(namespace_object())
        for i in range(1, 5):
            api.put(node_object(i))
        n = 0
        for i in range(services):
            api.put(service_object(f"s{i}", i))
            api.put(slice_object(f"s{i}", f"s{i}-a", n, per))
            n += per
        t0, started = await run.start_meshapi(etcd, tls_dir, str(kubeconfig))
        canaries = [synced_key(CELL, k) for k in SOURCE_KINDS]
        await run.until(
            lambda: all(c in run.seen for c in canaries), "the source's canaries", LISTING_TIMEOUT
        )
        done = max(run.seen[c] for c in canaries)
        listed = await count_records(store)
        if listed != services * (1 + per):
            raise BenchError(f"etcd holds {listed} records after the listing, not {services * 3}")
        listing = {
            "services": services,
            "endpoints_per_service": per,
            "records_in_etcd": listed,
            "start_to_canaries_s": round(done - t0, 3),
            "app_start_s": round(started - t0, 3),
            "canary_s": {
                str(k): round(run.seen[c] - t0, 3)
                for k, c in zip(SOURCE_KINDS, canaries, strict=True)
            },
            "floor_batched_write_s": floor["s"],
            "floor_records": floor["records"],
            "ratio_to_floor": round((done - t0) / floor["s"], 2),
        }

        # 2. The shapes changed later, added now; wait until every endpoint is in etcd.
        slices: dict[str, dict[str, Any]] = {}
        first = n
        r_services, r_per = REALISTIC
        for i in range(r_services):
            api.put(service_object(f"r{i}", services + i))
            slices[f"r{i}"] = slice_object(f"r{i}", f"r{i}-a", n, r_per)
            api.put(copy.deepcopy(slices[f"r{i}"]))
            n += r_per
        api.put(service_object("big", services + r_services))
        b_slices, b_per = BIG
        for i in range(b_slices):
            slices[f"big-{i}"] = slice_object("big", f"big-{i}", n, b_per)
            api.put(copy.deepcopy(slices[f"big-{i}"]))
            n += b_per
        added = n - first
        last = [
            endpoint_key(
                CELL,
                NAMESPACE,
                "r" + str(r_services - 1),
                pod_address(first + r_services * r_per - 1),
            ),
            endpoint_key(CELL, NAMESPACE, "big", pod_address(n - 1)),
        ]
        await run.until(lambda: all(k in run.seen for k in last), "the added shapes", 60)
        total = await count_records(store)
        expected = services * (1 + per) + r_services + 1 + added
        if total != expected:
            raise BenchError(f"etcd holds {total} records, not {expected}")

        modes = {
            "floor": floor_mode(run),
            "realistic": realistic_mode(run, slices),
            "big": big_mode(run, slices),
        }
        # The double's objects and history are this process's, not meshapi's: keep the cyclic
        # GC from walking them (its pauses would stall the load generator, not meshapi).
        gc.collect()
        gc.freeze()
        if args.meshapi_gc_freeze:
            run.res.children[-1].conn.send(("freeze",))
            assert run.inbox is not None
            await run.inbox.get("frozen", timeout=30)
        for mode in modes.values():
            await run.load(mode, WARMUP, args.rate, measured=False)
        per_round = max(1, args.samples // ROUNDS)
        wall = time.monotonic()
        for r in range(ROUNDS):
            order = [*MODES[r % 3 :], *MODES[: r % 3]]
            for name in order:
                await run.load(modes[name], per_round, args.rate, measured=True)
        wall = time.monotonic() - wall
        stats = await run.meshapi_stats()
        if stats["bad"]:
            raise BenchError(f"meshapi skipped {stats['bad']} objects as malformed")

        # 3. A restart over the same etcd: every record is adopted as stored, none rewritten.
        await run.stop_meshapi()
        for c in canaries:
            run.seen.pop(c, None)
        restart_mode = run.current = Mode("restart", lambda k: "")
        t0, _ = await run.start_meshapi(etcd, tls_dir, str(kubeconfig))
        await run.until(
            lambda: all(c in run.seen for c in canaries), "the canaries again", LISTING_TIMEOUT
        )
        restart = {
            "records_in_etcd": await count_records(store),
            "start_to_canaries_s": round(max(run.seen[c] for c in canaries) - t0, 3),
            "etcd_writes": restart_mode.events,  # canaries and the cell record: nothing else
        }
        run.current = None
    finally:
        if run is not None:
            await run.stop_meshapi()
        for task in watches:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await store.close()
        await api.stop()
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, raise_on_sigterm)

    figures: dict[str, Any] = {}
    for name, mode in modes.items():
        if len(mode.samples) != mode.changes:
            raise BenchError(f"{name}: {len(mode.samples)} samples for {mode.changes} changes")
        figures[name] = {
            "samples": len(mode.samples),
            "latency_ms": ms(mode.samples),
            "generator_late_ms_p99": ms(mode.lag)["p99"],
            "etcd_writes_per_change": round(mode.events / mode.changes, 3),
            "meshapi_txns_per_change": round(mode.txns / mode.changes, 3),
            "meshapi_cpu_ms_per_change": round(mode.cpu * 1000 / mode.changes, 3),
            "meshapi_gc_ms_per_change": round(mode.gc * 1000 / mode.changes, 3),
            "meshapi_gc_full": mode.gc_full,
            "meshapi_gc_frozen_objects": mode.frozen,
            "meshapi_gc_max_pause_ms": round(mode.gc_max * 1000, 2),
            "bench_process_cpu_ms_per_change": round(mode.own_cpu * 1000 / mode.changes, 3),
        }
    fl, re_, bg = (figures[m]["latency_ms"] for m in MODES)
    return {
        "rate_per_s": args.rate,
        "rounds": ROUNDS,
        "phase_s": round(wall, 2),
        "listing": listing,
        "restart": restart,
        "cell": {
            "services": services + r_services + 1,
            "endpoints": services * per + added,
            "realistic": f"{r_services}x{r_per}, one slice each",
            "big": f"1 service, {b_slices * b_per} endpoints over {b_slices} slices",
        },
        **figures,
        "realistic_vs_floor": ratio(re_, fl),
        "big_vs_realistic": ratio(bg, re_),
        "big_vs_realistic_cpu": round(
            figures["big"]["meshapi_cpu_ms_per_change"]
            / max(figures["realistic"]["meshapi_cpu_ms_per_change"], 1e-6),
            2,
        ),
    }


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="changes per second")
    parser.add_argument("--samples", type=int, default=1000, help="measured changes per mode")
    parser.add_argument(
        "--listing-services", type=int, default=2000, help="services (2 endpoints each) listed"
    )
    parser.add_argument("--quick", action="store_true", help="200 samples, 500 services listed")
    parser.add_argument(
        "--meshapi-gc-freeze",
        action="store_true",
        help="experiment: meshapi freezes again once the whole cell is loaded (not product code)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.listing_services = 200, 500
    if args.rate <= 0 or args.samples < ROUNDS * 2 or args.listing_services < 1:
        parser.error(f"need --rate > 0, --samples >= {ROUNDS * 2}, --listing-services >= 1")
    if args.listing_services > 20_000:
        parser.error("at most 20 000 listed services (the cell's pod CIDR is a /16)")
    return args


def make_tls(root: Path) -> str:
    ca = root / "ca"
    create_ca(trust_domain="bench.test", out_dir=ca)
    out = root / "alpha-meshapi"
    issue_certificate(ca_dir=ca, cell=CELL, role=Role.MESHAPI, out_dir=out)
    return str(out)


def run(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("warning")  # structlog to stderr: stdout carries the JSON line only
    res = Resources(Path(tempfile.mkdtemp(prefix="cellmesh-bench-")))
    with interruptible("kube_source", res.release):
        tls_dir = make_tls(res.root)
        etcd = LocalEtcd(data_dir=res.root / "etcd" / "data")
        res.etcds.append(etcd)  # before start: a half-started one is stopped too
        etcd.start()
        figures = asyncio.run(measure(res, tls_dir, args))
    return {
        "samples_per_mode": args.samples,
        "meshapi_gc_freeze": args.meshapi_gc_freeze,
        **figures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return bench_main("kube_source", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
