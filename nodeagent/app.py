"""`AgentApp`: the node agent process — datapath, agent loop, registration, HTTP (wiring only).

Start: load the BPF object and attach it to the agent's cgroup (pins are reused: a restart never
detaches), open the pinned maps, restore the view, start the agent, the registration loop, the
status publisher (`nodeagent.report`: the node's `AgentStatus` through the own meshapi) and the
HTTP server. Stop: stop watching and serving; the datapath and routes stay (stop is not remove).
With ``node_from_record`` (`--registration kubernetes`) there is no registrar: the agent is a
`NodeRecordAgent`, ready only once its cell holds its Node record (`nodeagent.ownnode`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from aiohttp import web

from bpf.layout import MapSizes
from bpf.lbmaps import LbMaps
from bpf.loader import SockLbLoader
from bpf.pinned_maps import PinnedLbMaps
from meshcore.client import MeshApiError, MeshClient
from meshcore.model import AGENT_STATUS_INTERVAL
from nodeagent.agent import Agent, AgentConfig, RouteProgrammer
from nodeagent.http import build_http_app
from nodeagent.ownnode import NodeRecordAgent
from nodeagent.registration import Registrar
from nodeagent.report import StatusPublisher

log = structlog.get_logger("nodeagent.app")

OBJECT_PATH = Path(__file__).resolve().parent.parent / "bpf" / "sock_lb.o"


@dataclass(frozen=True)
class DatapathConfig:
    cgroup: Path
    pin_dir: Path  # <bpffs>/cellmesh/<instance>
    object_path: Path = OBJECT_PATH
    map_sizes: MapSizes = field(default_factory=MapSizes)  # --bpf-lb-map-max


class AgentApp:
    def __init__(
        self,
        config: AgentConfig,
        *,
        http: str,
        registrar: Registrar | None = None,
        node_from_record: bool = False,
        datapath: DatapathConfig | None = None,
        maps: LbMaps | None = None,
        routes: RouteProgrammer | None = None,
        register_interval: float = 2.0,
        status_interval: float = AGENT_STATUS_INTERVAL,
    ) -> None:
        if (datapath is None) == (maps is None):
            raise ValueError("give either a datapath to load or maps to use")
        if node_from_record and registrar is not None:
            raise ValueError("a node whose record comes from the cluster registers nothing")
        self.config = config
        self.http = http
        self.registrar = registrar
        self.node_from_record = node_from_record
        self.datapath = datapath
        self._maps = maps
        self.routes = routes
        self.register_interval = register_interval
        self.status_interval = status_interval
        self.publisher: StatusPublisher | None = None
        self.loader: SockLbLoader | None = None
        self.agent: Agent | None = None
        self.http_port = 0
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._client: MeshClient | None = None

    async def start(self) -> None:
        maps = self._maps
        if self.datapath is not None:
            dp = self.datapath
            loader = SockLbLoader(
                object_path=dp.object_path,
                instance=dp.pin_dir.name,
                bpffs=dp.pin_dir.parent.parent,
                sizes=dp.map_sizes,
            )
            loader.attach(dp.cgroup)
            self.loader = loader
            maps = PinnedLbMaps(loader.maps_dir, sizes=dp.map_sizes)
        assert maps is not None
        agent_class = NodeRecordAgent if self.node_from_record else Agent
        self.agent = agent_class(self.config, maps=maps, routes=self.routes)
        await self.agent.start()
        self._client = MeshClient(
            self.config.meshapi, self.config.tls_dir, server_name=self.config.server_name
        )
        if self.registrar is not None:
            self._tasks.append(asyncio.create_task(self._register(), name="registration"))
        self.publisher = StatusPublisher(self.agent, self._client, interval=self.status_interval)
        self._tasks.append(asyncio.create_task(self.publisher.run(), name="status-report"))
        self._runner = web.AppRunner(build_http_app(self.agent), access_log=None)
        await self._runner.setup()
        host, _, port = self.http.rpartition(":")
        site = web.TCPSite(self._runner, host or "127.0.0.1", int(port))
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else int(port)
        log.info("nodeagent started", cell=self.config.cell, node=self.config.node,
                 http_port=self.http_port)  # fmt: skip

    async def _register(self) -> None:
        assert self.agent is not None
        assert self.registrar is not None
        assert self._client is not None
        own = self.agent.view.own
        while True:
            try:
                await self.registrar.reconcile(self._client, own.cache, synced=own.synced_once)
            except MeshApiError as e:
                self.registrar.stats.errors += 1
                self.registrar.stats.last_error = str(e)
                log.warning("Registration failed, retrying", error=str(e))
            await asyncio.sleep(self.register_interval)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.agent is not None:
            await self.agent.stop()
        if self._client is not None:
            await self._client.close()
        if self.loader is not None:
            self.loader.close()  # the pins keep the datapath attached
        if isinstance(self.agent and self.agent.maps, PinnedLbMaps):
            self.agent.maps.close()  # type: ignore[union-attr]
