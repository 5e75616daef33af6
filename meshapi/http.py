"""HTTP side of meshapi (aiohttp): /healthz, /readyz, /metrics (Prometheus), /status (JSON).

/status `source` says where services, endpoints, nodes and peers come from: ``{"type":
"standalone"}``, or the Kubernetes source's per-resource progress and its malformed objects
(also counted in ``meshapi_source_bad_objects_total{kind}``); /readyz waits for every kind the
source owns to be synced.

After an etcd wipe, /status `recovery` and the `meshapi_lost_records{kind}` /
`meshapi_withheld_canaries{kind}` gauges say what was lost and which canaries are withheld
(meshapi.resync).

Metrics are read from the parts' own counters at scrape time (a custom collector), so there is no
second bookkeeping that could drift from the truth.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshapi.cache import WatchCache
from meshapi.recovery import StoreRecovery
from meshapi.resync import CANARY_KINDS
from meshapi.server import MeshApiService
from meshapi.writer import RecordWriter

RECOVERY_KINDS = tuple(str(k) for k in CANARY_KINDS)


class KubeSource(Protocol):
    """What the HTTP side reads of the Kubernetes source (`meshapi.kubesource.KubeSource`)."""

    @property
    def synced(self) -> bool: ...
    def status(self) -> dict[str, Any]: ...
    def bad_object_counts(self) -> dict[str, int]: ...


class MeshApiCollector(Collector):
    def __init__(
        self,
        *,
        cell: str,
        cache: WatchCache,
        service: MeshApiService,
        writer: RecordWriter,
        recovery: StoreRecovery | None = None,
        source: KubeSource | None = None,
    ) -> None:
        self._cell = cell
        self._cache = cache
        self._service = service
        self._writer = writer
        self._recovery = recovery
        self._source = source

    def collect(self) -> Iterator[Metric]:
        cache, stats = self._cache, self._cache.stats
        g = GaugeMetricFamily("meshapi_watchers", "Open watch streams by view", labels=["view"])
        for view, n in sorted(self._service.watchers.items()):
            g.add_metric([view], n)
        yield g
        c = CounterMetricFamily(
            "meshapi_requests", "gRPC requests by method and status", labels=["method", "code"]
        )
        for (method, code), n in sorted(self._service.requests.items()):
            c.add_metric([method, code], n)
        yield c
        c = CounterMetricFamily(
            "meshapi_bad_records", "Records in etcd that failed validation", labels=["kind"]
        )
        for kind, n in sorted(stats.bad_records.items()):
            c.add_metric([kind], n)
        yield c
        records = GaugeMetricFamily("meshapi_records", "Valid records cached", labels=["kind"])
        per_kind: dict[str, int] = {}
        for item in cache.full.values():
            per_kind[item.kind] = per_kind.get(item.kind, 0) + 1
        for kind, n in sorted(per_kind.items()):
            records.add_metric([kind], n)
        yield records
        yield CounterMetricFamily(
            "meshapi_store_events", "etcd events ingested", value=stats.events_in
        )
        yield CounterMetricFamily(
            "meshapi_batches_published", "Batches published to views", value=stats.batches_published
        )
        yield CounterMetricFamily(
            "meshapi_events_sent", "Events sent to watchers", value=stats.events_sent
        )
        yield CounterMetricFamily(
            "meshapi_batches_sent", "Batches sent to watchers", value=stats.batches_sent
        )
        yield CounterMetricFamily("meshapi_relists", "Relists of etcd", value=stats.relists)
        yield CounterMetricFamily(
            "meshapi_slow_watchers_dropped",
            "Watchers ended for falling behind",
            value=stats.slow_watchers_dropped,
        )
        yield GaugeMetricFamily("meshapi_revision", "Store revision reached", value=cache.revision)
        yield GaugeMetricFamily(
            "meshapi_gc_frozen_objects",
            "Objects kept out of full garbage collections since the initial sync (gc.freeze)",
            value=gc.get_freeze_count(),
        )
        yield CounterMetricFamily(
            "meshapi_store_txns", "Write txns landed", value=self._writer.stats.txns
        )
        yield CounterMetricFamily(
            "meshapi_writes_rejected",
            "Writes etcd refused for good (their caller got the error)",
            value=self._writer.stats.rejected_writes,
        )
        if self._source is not None:
            c = CounterMetricFamily(
                "meshapi_source_bad_objects",
                "Malformed Kubernetes objects skipped by the source, by resource",
                labels=["kind"],
            )
            for kind, n in self._source.bad_object_counts().items():
                c.add_metric([kind], n)
            yield c
        if self._recovery is not None:
            core = self._recovery.core
            lost = GaugeMetricFamily(
                "meshapi_lost_records",
                "Records only an operator wrote, lost in a store wipe and not restored yet",
                labels=["kind"],
            )
            withheld = GaugeMetricFamily(
                "meshapi_withheld_canaries",
                "1 while a kind's sync canary is withheld after a store wipe",
                labels=["kind"],
            )
            counts = self._recovery.lost_counts()
            for kind in RECOVERY_KINDS:
                lost.add_metric([kind], counts.get(kind, 0))
                withheld.add_metric([kind], 1 if kind in core.withheld else 0)
            yield lost
            yield withheld
            yield CounterMetricFamily(
                "meshapi_store_wipes", "Store wipes noticed", value=core.wipes
            )


def status_document(
    *,
    cell: str,
    cache: WatchCache,
    service: MeshApiService,
    writer: RecordWriter,
    recovery: StoreRecovery | None = None,
    source: KubeSource | None = None,
) -> dict[str, Any]:
    per_kind: dict[str, int] = {}
    for item in cache.full.values():
        per_kind[item.kind] = per_kind.get(item.kind, 0) + 1
    return {
        "cell": cell,
        "ready": cache.synced.is_set() and cache.connected,
        "store": {"connected": cache.connected, "revision": cache.revision, "epoch": cache.epoch},
        "records": dict(sorted(per_kind.items())),
        "watchers": dict(service.watchers),
        "bad_records": dict(cache.stats.bad_records),
        "bad_keys": dict(sorted(cache.bad_keys.items())[:50]),
        "synced_kinds": sorted(writer.stats.synced_kinds),
        "peers": sorted(
            item.key.rsplit("/", 1)[-1] for item in cache.full.values() if item.kind == "peers"
        ),
        "recovery": recovery.status() if recovery is not None else None,
        "source": source.status() if source is not None else {"type": "standalone"},
    }


def build_http_app(
    *,
    cell: str,
    cache: WatchCache,
    service: MeshApiService,
    writer: RecordWriter,
    recovery: StoreRecovery | None = None,
    extra_status: Callable[[], Mapping[str, Any]] | None = None,
    source: KubeSource | None = None,
) -> web.Application:
    registry = CollectorRegistry()
    registry.register(
        MeshApiCollector(
            cell=cell,
            cache=cache,
            service=service,
            writer=writer,
            recovery=recovery,
            source=source,
        )
    )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if not cache.connected:
            return web.Response(status=503, text="etcd not reachable\n")
        if not cache.synced.is_set():
            return web.Response(status=503, text="watch cache not synced\n")
        if source is not None and not source.synced:
            waiting = ", ".join(k for k, v in source.status()["kinds"].items() if not v["synced"])
            return web.Response(status=503, text=f"Kubernetes source not synced: {waiting}\n")
        return web.Response(text="ready\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    async def status(_: web.Request) -> web.Response:
        doc = status_document(
            cell=cell,
            cache=cache,
            service=service,
            writer=writer,
            recovery=recovery,
            source=source,
        )
        if extra_status is not None:
            doc.update(extra_status())
        return web.Response(text=json.dumps(doc, indent=2) + "\n", content_type="application/json")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    return app
