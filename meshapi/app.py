"""Wires one cell's meshapi: etcd store -> watch cache -> gRPC (mTLS) and HTTP; writer -> etcd.

Holds no logic worth testing alone: start order, the heartbeat loop, and shutdown. After a wipe
of the store, `StoreRecovery` decides when each kind's canary is written again. With
``source="kubernetes"`` a `KubeSource` owns services, endpoints, nodes and peers: it writes them
from the cluster's API and marks their canaries (also after a wipe); admin writes of them are
refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import grpc
import structlog
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from certs import Role, identity_from_certificate
from meshapi.authz import CellPolicy
from meshapi.cache import WatchCache
from meshapi.etcd_adapter import EtcdStore
from meshapi.http import build_http_app
from meshapi.kubesource import DEFAULT_WATCH_TIMEOUT, KubeSource
from meshapi.kubesource import RETRY_DELAYS as KUBE_RETRY_DELAYS
from meshapi.kubestate import SOURCE_KINDS
from meshapi.recovery import StoreRecovery
from meshapi.resync import (
    CANARY_KINDS,
    DEFAULT_LOST_STATE_GRACE,
    DEFAULT_RESYNC_GRACE,
    WipeRecovery,
)
from meshapi.server import MeshApiService
from meshapi.writer import RecordWriter
from meshcore.model import CellConfig, Heartbeat, encode_record, heartbeat_key
from meshcore.tls import TlsMaterial, server_credentials

log = structlog.get_logger("meshapi")


class ConfigError(ValueError):
    """meshapi was started with settings that cannot work; the message says which."""


@dataclass(frozen=True)
class MeshApiConfig:
    cell: str
    cell_id: int
    pod_cidrs: tuple[IPv4Network | IPv6Network, ...]
    etcd_endpoints: tuple[str, ...]
    listen: str
    tls_dir: Path
    http: str
    node_cidrs: tuple[IPv4Network | IPv6Network, ...] = ()
    heartbeat_interval: float = 5.0
    history_events: int = 100_000
    capabilities: tuple[str, ...] = ("socket-lb", "ipv4")
    # After a wipe: how long a kind the agents re-create waits for every node to register
    # again, and how long records only an operator wrote are waited for (then deleted).
    resync_grace: float = DEFAULT_RESYNC_GRACE
    lost_state_grace: float = DEFAULT_LOST_STATE_GRACE
    # Where services, endpoints, nodes and peers come from: etcd itself ("standalone": the lab,
    # admin writes) or a Kubernetes API ("kubernetes"; in-cluster when kubeconfig is None).
    source: str = "standalone"
    kubeconfig: Path | None = None
    kube_context: str | None = None
    kube_namespace: str = "cellmesh"
    kube_watch_timeout: int = DEFAULT_WATCH_TIMEOUT
    kube_retry_delays: tuple[float, ...] = KUBE_RETRY_DELAYS


@dataclass
class MeshApiApp:
    config: MeshApiConfig
    grpc_port: int = 0
    http_port: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    source: KubeSource | None = None

    async def start(self) -> None:
        cfg = self.config
        if cfg.source not in ("standalone", "kubernetes"):
            raise ConfigError(f"unknown source {cfg.source!r} (standalone or kubernetes)")
        kube = cfg.source == "kubernetes"
        tls = TlsMaterial.from_dir(cfg.tls_dir)
        me = identity_from_certificate(tls.cert)
        if me.cell != cfg.cell or me.role is not Role.MESHAPI:
            raise ConfigError(
                f"{cfg.tls_dir}/tls.crt is for {me.role} of cell {me.cell}; "
                f"meshapi of cell {cfg.cell} needs a meshapi certificate of that cell"
            )
        cell_config = CellConfig(
            name=cfg.cell,
            id=cfg.cell_id,
            pod_cidrs=list(cfg.pod_cidrs),
            node_cidrs=list(cfg.node_cidrs),
            capabilities=list(cfg.capabilities),
        )
        self.store = EtcdStore(list(cfg.etcd_endpoints))
        await self.store.connect()
        self.cache = WatchCache(self.store, history_events=cfg.history_events)
        self.writer = RecordWriter(self.store, cell=cfg.cell)
        self.recovery = StoreRecovery(
            cache=self.cache,
            writer=self.writer,
            core=WipeRecovery(
                cfg.cell,
                resync_grace=cfg.resync_grace,
                lost_state_grace=cfg.lost_state_grace,
                external_kinds=SOURCE_KINDS if kube else frozenset(),
            ),
        )
        self.cache.on_reset.append(self.recovery.on_reset)
        if kube:
            self.source = KubeSource(
                config=cell_config,
                writer=self.writer,
                cache=self.cache,
                kubeconfig=cfg.kubeconfig,
                context=cfg.kube_context,
                namespace=cfg.kube_namespace,
                watch_timeout=cfg.kube_watch_timeout,
                retry_delays=cfg.kube_retry_delays,
            )
            self.cache.on_reset.append(self.source.on_reset)
        self.service = MeshApiService(
            cache=self.cache,
            writer=self.writer,
            policy=CellPolicy(cell=cfg.cell, trust_domain=me.trust_domain),
            recovery=self.recovery,
            source_kinds=SOURCE_KINDS if kube else frozenset(),
        )
        self._tasks.append(asyncio.create_task(self.cache.run(), name="cache"))
        self._tasks.append(asyncio.create_task(self.writer.run(), name="writer"))
        self._tasks.append(asyncio.create_task(self.recovery.run(), name="recovery"))
        self.writer.own(cell_config.key(), encode_record(cell_config))
        # Standalone mode: etcd itself is the source of every kind, so each kind is complete
        # once the writes queued before its canary (the cell config) have landed. (After a
        # wipe noticed while running, `StoreRecovery` withholds them until the sources re-listed.)
        # Kubernetes mode: the source marks its kinds once each initial listing is written.
        self.recovery.mark_all_synced()
        if self.source is not None:
            self._tasks.append(asyncio.create_task(self.source.run(), name="kube-source"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))

        self.grpc_server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)]
        )
        for handler in self.service.generic_handlers():
            self.grpc_server.add_generic_rpc_handlers((handler,))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        self.grpc_port = self.grpc_server.add_secure_port(
            cfg.listen, server_credentials(cfg.tls_dir)
        )
        if self.grpc_port == 0:
            raise ConfigError(f"cannot listen on {cfg.listen}")
        await self.grpc_server.start()
        self._tasks.append(asyncio.create_task(self._track_health(), name="health"))

        self.http_runner = web.AppRunner(
            build_http_app(
                cell=cfg.cell,
                cache=self.cache,
                service=self.service,
                writer=self.writer,
                recovery=self.recovery,
                source=self.source,
            ),
            access_log=None,
        )
        await self.http_runner.setup()
        host, _, port = cfg.http.rpartition(":")
        site = web.TCPSite(self.http_runner, host or "127.0.0.1", int(port))
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else int(port)
        log.info(
            "meshapi started",
            cell=cfg.cell,
            grpc_port=self.grpc_port,
            http_port=self.http_port,
        )

    async def _heartbeat(self) -> None:
        cfg = self.config
        sequence = 0
        while True:
            beat = Heartbeat(cell=cfg.cell, timestamp=time.time(), sequence=sequence)
            sequence += 1
            self.writer.submit(puts=[(heartbeat_key(cfg.cell), encode_record(beat))])
            with contextlib.suppress(Exception):
                await self.cache.check_epoch()
            await asyncio.sleep(cfg.heartbeat_interval)

    async def _track_health(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        while True:
            ok = self.cache.synced.is_set() and self.cache.connected
            await self.health.set("", serving if ok else not_serving)
            await asyncio.sleep(0.5)

    async def wait_ready(self, *, timeout: float = 20.0) -> None:
        await asyncio.wait_for(self.cache.synced.wait(), timeout)
        deadline = time.monotonic() + timeout
        while self.writer.stats.canaries < len(CANARY_KINDS):
            if time.monotonic() > deadline:
                raise TimeoutError("meshapi canaries not written")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.grpc_server.stop(grace=0.5)
        with contextlib.suppress(Exception):
            await self.http_runner.cleanup()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.store.close()
