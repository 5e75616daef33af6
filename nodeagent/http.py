"""HTTP side of the node agent (aiohttp): /healthz, /readyz, /metrics (Prometheus), /status.

Everything is read at request time (a custom collector): the cells from the agent's
`MeshView.status()`, the maps from the reconciler's counters, so the numbers cannot drift from
what the agent does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bpf.lbmaps import MAP_SHAPES
from nodeagent.agent import Agent
from nodeagent.meshview import CellStatus, PeerState
from nodeagent.peers import PeerWatcher
from nodeagent.report import peer_report

LB_MAPS = tuple(MAP_SHAPES)


def cell_status(cell: CellStatus) -> dict[str, Any]:
    """The cell's `PeerReport` (what `meshctl status` sees) plus the watcher's internals."""
    report = peer_report(cell)
    return {
        **report.model_dump(mode="json", exclude={"error_class"}),
        "address": cell.address,
        "last_error": cell.last_error,  # whole: the record cuts it
        "last_error_class": report.error_class or None,
        "synced_kinds": cell.synced_kinds,
        "held_deletes": cell.held_deletes,
        "bad_records": cell.bad_records,
        "listings": cell.listings,
    }


def peer_status(w: PeerWatcher, now: float) -> dict[str, Any]:
    """`cell_status` of one watcher's cell (``now`` on the agent's monotonic clock)."""
    return cell_status(w.status(now))


def status_document(agent: Agent) -> dict[str, Any]:
    ready, reason = agent.ready()
    rec = agent.reconciler
    mesh = agent.view.status(agent.now())
    peers = {name: cell_status(c) for name, c in sorted(mesh.peers.items())}
    for name, c in mesh.gone.items():
        peers.setdefault(name, cell_status(c))
    return {
        "cell": agent.config.cell,
        "node": agent.config.node,
        "ready": ready,
        "reason": reason,
        "own": cell_status(mesh.own),
        "peers": peers,
        "services": len(agent.selections),
        "maps": {
            "services": len(agent.maps.landed.services),
            "backends": len(agent.maps.landed.backends),
            "deletes_allowed": rec.deletes_allowed,
            "pending": rec.pending,
            "applies": rec.stats.applies,
            "failed": rec.stats.failed,
            "last_error": rec.stats.last_error,
            "attempts": rec.stats.attempts,
            # Maps that refused entries (map full): capacity, entries parked, refusals so far.
            "full": {
                f.map_name: {"capacity": f.capacity, "parked": f.parked, "refused": f.refused}
                for f in rec.full_maps()
            },
        },
        "routes": {"errors": agent.stats.route_errors, "last_error": agent.stats.last_route_error},
        "time": time.time(),
    }


class AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self._agent
        cells = agent.view.status(agent.now()).watched()
        state = GaugeMetricFamily(
            "nodeagent_peer_state", "1 for the peer's current state", labels=["peer", "state"]
        )
        for c in cells:
            for s in PeerState:
                state.add_metric([c.cell, str(s)], 1.0 if c.state == s else 0.0)
        yield state
        events = CounterMetricFamily(
            "nodeagent_events_applied", "Record changes applied per peer", labels=["peer"]
        )
        bad = CounterMetricFamily(
            "nodeagent_bad_records", "Peer records dropped as invalid", labels=["peer", "kind"]
        )
        for c in cells:
            events.add_metric([c.cell], c.applied)
            for kind, n in sorted(c.bad_records.items()):
                bad.add_metric([c.cell, kind], n)
        yield events
        yield bad
        hist = agent.stats.propagation
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(hist.buckets, hist.counts, strict=False):
            running += n
            buckets.append((repr(bound), running))
        buckets.append(("+Inf", hist.samples))
        yield HistogramMetricFamily(
            "nodeagent_propagation_seconds",
            "Endpoint change (record timestamp) to BPF map write",
            buckets=buckets,
            sum_value=hist.total,
        )
        entries = GaugeMetricFamily("nodeagent_map_entries", "LB map entries", labels=["map"])
        entries.add_metric(["services"], len(agent.maps.landed.services))
        entries.add_metric(["backends"], len(agent.maps.landed.backends))
        yield entries
        yield CounterMetricFamily(
            "nodeagent_map_write_failures", "Failed map writes", value=agent.reconciler.stats.failed
        )
        rec = agent.reconciler
        full = {f.map_name: f for f in rec.full_maps()}
        names = sorted({*LB_MAPS, *rec.full.refused})
        is_full = GaugeMetricFamily(
            "nodeagent_bpf_map_full",
            "1 while the map refuses entries for lack of room",
            labels=["map"],
        )
        parked = GaugeMetricFamily(
            "nodeagent_bpf_map_parked_entries",
            "Entries waiting for room in a full map",
            labels=["map"],
        )
        refused = CounterMetricFamily(
            "nodeagent_bpf_map_refused_entries",
            "Writes a full map refused (E2BIG / ENOSPC)",
            labels=["map"],
        )
        for name in names:
            is_full.add_metric([name], 1.0 if name in full else 0.0)
            parked.add_metric([name], full[name].parked if name in full else 0)
            refused.add_metric([name], rec.full.refused[name])
        yield is_full
        yield parked
        yield refused
        yield CounterMetricFamily(
            "nodeagent_merges",
            "Whole-service merges (service or cell state changed)",
            value=agent.stats.merges,
        )
        yield CounterMetricFamily(
            "nodeagent_endpoint_updates",
            "Endpoint changes applied to a service's selection",
            value=agent.stats.endpoint_updates,
        )


def build_http_app(agent: Agent) -> web.Application:
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ready, reason = agent.ready()
        return web.Response(status=200 if ready else 503, text=reason + "\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    async def status(_: web.Request) -> web.Response:
        doc = status_document(agent)
        return web.Response(text=json.dumps(doc, indent=2) + "\n", content_type="application/json")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    return app
