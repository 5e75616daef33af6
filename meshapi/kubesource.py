"""meshapi's Kubernetes source: list-then-watch the cluster's API, write the diffs into etcd.

It uses `kubernetes_asyncio` (not the sync `kubernetes` client): meshapi is one asyncio
process, and its watches must be cancellable at once on stop, without a thread per watch.

Flow: per resource (`WatchKind`) a task lists (``limit=500`` + ``continue``), feeds the listing
to `KubeState` (mark-and-sweep), then watches from the listing's resourceVersion with bookmarks
and a server timeout, re-watching from the last seen version when a stream ends. ``410 Gone``
relists; any other failure is retried with capped backoff, and meanwhile the last good records
stay. Each record kind's first write is a diff against what etcd holds for it (`cache.full`),
after which its sync canary is queued (`RecordWriter.mark_synced`, behind those writes); until
then the kind's changes only update the desired state. Malformed objects are skipped, counted
and named in /status (`KubeState.bad`); a Service that became malformed keeps its last good
record. After an etcd wipe (`on_reset`) the whole desired state is written again and the
synced kinds re-marked. Objects are read as the API's own JSON (``_preload_content=False``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig

from meshapi.cache import WatchCache
from meshapi.kubeobjects import PEERS_CONFIGMAP
from meshapi.kubestate import CANARY_WATCHES, Diff, KubeState, WatchKind
from meshapi.writer import RecordWriter
from meshcore.backoff import Backoff, sleep
from meshcore.model import CellConfig, Kind

log = structlog.get_logger("meshapi.kubesource")

LIST_LIMIT = 500
DEFAULT_WATCH_TIMEOUT = 300  # seconds the server keeps a watch open (then we re-watch)
LIST_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
CANARY_ORDER = (Kind.SERVICE, Kind.ENDPOINT, Kind.NODE, Kind.PEER)


class KubeApiError(Exception):
    """The API answered with an error status (or a watch ERROR event); `code` is HTTP's."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Gone(KubeApiError):
    """410: the resourceVersion (or continue token) is too old; relist."""


@dataclass
class WatchStatus:
    """One resource's progress, as /status shows it."""

    listings: int = 0
    relists: int = 0
    bookmarks: int = 0
    resource_version: str = ""
    last_error: str | None = None
    listed: asyncio.Event = field(default_factory=asyncio.Event)


Lister = Callable[..., Awaitable[Any]]


async def api_client(kubeconfig: Path | None, context: str | None) -> kclient.ApiClient:
    """A client for the kubeconfig's context, or in-cluster (service account) when None."""
    configuration = kclient.Configuration()
    if kubeconfig is None:
        kconfig.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await kconfig.load_kube_config(
            config_file=str(kubeconfig),
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    return kclient.ApiClient(configuration)


async def _error_of(resp: Any) -> KubeApiError:
    """The error of a non-200 response (an aiohttp response: the client's, unparsed)."""
    text = await resp.text()
    with contextlib.suppress(ValueError, AttributeError):
        text = json.loads(text).get("message", text)
    cls = Gone if resp.status == 410 else KubeApiError
    return cls(resp.status, text[:300])


class KubeSource:
    def __init__(
        self,
        *,
        config: CellConfig,
        writer: RecordWriter,
        cache: WatchCache,
        kubeconfig: Path | None,
        context: str | None = None,
        namespace: str = "cellmesh",
        watch_timeout: int = DEFAULT_WATCH_TIMEOUT,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self.state = KubeState(config)
        self.writer = writer
        self.cache = cache
        self.kubeconfig = kubeconfig
        self.context = context
        self.namespace = namespace
        self.watch_timeout = watch_timeout
        self.retry_delays = retry_delays
        self.watches = {w: WatchStatus() for w in WatchKind}
        self.written: set[Kind] = set()  # kinds whose first write (and canary) is queued
        self._written_events = {k: asyncio.Event() for k in CANARY_ORDER}
        self._api: kclient.ApiClient | None = None

    # ---- public ---------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self.written == set(CANARY_ORDER)

    async def run(self) -> None:
        while self._api is None:
            try:
                self._api = await api_client(self.kubeconfig, self.context)
            except Exception as e:  # a bad kubeconfig or no service account: say so, retry
                log.error("Cannot load the Kubernetes client configuration", error=str(e))
                for status in self.watches.values():
                    status.last_error = f"client configuration: {e}"
                await asyncio.sleep(self.retry_delays[-1])
        try:
            async with asyncio.TaskGroup() as group:
                for watch in WatchKind:
                    group.create_task(self._run_watch(watch), name=f"kube-{watch}")
                for kind in CANARY_ORDER:
                    group.create_task(self._first_write(kind), name=f"kube-sync-{kind}")
        finally:
            await self._api.close()

    def on_reset(self) -> None:
        """The store was wiped: write the whole desired state again, re-mark synced kinds."""
        records = self.state.records_of(self.written)
        self.writer.submit(puts=list(records.items()))
        for kind in CANARY_ORDER:
            if kind in self.written:
                self.writer.mark_synced(kind)
        log.warning("Store wiped: desired state written again", records=len(records))

    def status(self) -> dict[str, Any]:
        kinds: dict[str, Any] = {}
        for watch, st in self.watches.items():
            kinds[str(watch)] = {
                "synced": self._watch_synced(watch),
                "objects": self.state.objects(watch),
                "listings": st.listings,
                "relists": st.relists,
                "bookmarks": st.bookmarks,
                "resource_version": st.resource_version,
                "last_error": st.last_error,
            }
        bad = sorted(self.state.bad.values(), key=lambda b: b.since, reverse=True)
        return {
            "type": "kubernetes",
            "kinds": kinds,
            "bad_objects": [b.as_json() for b in bad],
        }

    def _watch_synced(self, watch: WatchKind) -> bool:
        """Every record kind this resource feeds has had its first write (and canary)."""
        return all(k in self.written for k, ws in CANARY_WATCHES.items() if watch in ws)

    def bad_object_counts(self) -> dict[str, int]:
        return {str(w): self.state.bad_total[w] for w in WatchKind}

    # ---- first write and canary per record kind -------------------------------------------

    async def _first_write(self, kind: Kind) -> None:
        for watch in CANARY_WATCHES[kind]:
            await self.watches[watch].listed.wait()
        if kind is Kind.ENDPOINT:  # a peer sees endpoints of services it knows
            await self._written_events[Kind.SERVICE].wait()
        await self.cache.synced.wait()
        stored = {k: item for k, item in self.cache.full.items() if item.kind is kind}
        diff = self.state.initial_diff(kind, stored)
        self.written.add(kind)
        self._submit(diff)
        self.writer.mark_synced(kind)
        self._written_events[kind].set()
        log.info(
            "Kind listed and written, canary queued",
            kind=str(kind),
            puts=len(diff.puts),
            deletes=len(diff.deletes),
        )

    def _submit(self, diff: Diff) -> None:
        for error in diff.errors:
            log.warning("Malformed Kubernetes object skipped", kind=error.kind, error=str(error))
        out = diff.only(self.written)
        if out:
            self.writer.submit(puts=list(out.puts.items()), deletes=list(out.deletes))

    # ---- list and watch -------------------------------------------------------------------

    def _lister(self, watch: WatchKind) -> tuple[Lister, dict[str, Any]]:
        assert self._api is not None
        core = kclient.CoreV1Api(self._api)
        if watch is WatchKind.SERVICES:
            return core.list_service_for_all_namespaces, {}
        if watch is WatchKind.NAMESPACES:
            return core.list_namespace, {}
        if watch is WatchKind.NODES:
            return core.list_node, {}
        if watch is WatchKind.CONFIGMAPS:
            return core.list_namespaced_config_map, {
                "namespace": self.namespace,
                "field_selector": f"metadata.name={PEERS_CONFIGMAP}",
            }
        discovery = kclient.DiscoveryV1Api(self._api)
        return discovery.list_endpoint_slice_for_all_namespaces, {}

    async def _run_watch(self, watch: WatchKind) -> None:
        status = self.watches[watch]
        backoff = Backoff(self.retry_delays)
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list(watch)
                    backoff.reset()
                version = await self._watch(watch, version)
                status.last_error = None
                backoff.reset()
            except Gone as e:
                log.info("Resource version gone, relisting", kind=str(watch), error=str(e))
                status.relists += 1
                version = None
            except Exception as e:  # unreachable, refused, garbled: keep the records, retry
                status.last_error = str(e) or type(e).__name__
                delay = backoff.next_delay()
                log.warning(
                    "Kubernetes API call failed, retrying",
                    kind=str(watch),
                    error=status.last_error,
                    delay=round(delay, 3),
                )
                await sleep(delay)

    async def _list(self, watch: WatchKind) -> str:
        """List every object (paged), apply the listing; returns its resourceVersion."""
        fn, kwargs = self._lister(watch)
        status = self.watches[watch]
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            args = dict(kwargs, limit=LIST_LIMIT, _preload_content=False)
            if token:
                args["_continue"] = token
            resp = await fn(**args, _request_timeout=LIST_TIMEOUT)
            try:
                if resp.status != 200:
                    raise await _error_of(resp)
                body = await resp.json()
            finally:
                resp.release()
            items.extend(body.get("items") or [])
            metadata = body.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                version = str(metadata.get("resourceVersion") or "")
                break
        status.listings += 1
        status.resource_version = version
        self._submit(self.state.relist(watch, items))
        status.listed.set()
        log.info("Listed", kind=str(watch), objects=len(items), resource_version=version)
        return version

    async def _watch(self, watch: WatchKind, version: str) -> str:
        """Watch from `version` until the server ends the stream; returns the last version."""
        fn, kwargs = self._lister(watch)
        status = self.watches[watch]
        resp = await fn(
            **kwargs,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
            _preload_content=False,
            # (connect, read): a stream quiet for longer than the server's timeout is dead.
            _request_timeout=(CONNECT_TIMEOUT, self.watch_timeout + 30),
        )
        try:
            if resp.status != 200:
                raise await _error_of(resp)
            while line := await resp.content.readline():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    code = int(obj.get("code") or 500)
                    cls = Gone if code == 410 else KubeApiError
                    raise cls(code, str(obj.get("message", ""))[:300])
                metadata = obj.get("metadata") or {}
                if metadata.get("resourceVersion"):
                    version = str(metadata["resourceVersion"])
                if kind == "BOOKMARK":
                    status.bookmarks += 1
                elif kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._submit(self.state.apply(watch, kind, obj))
                status.resource_version = version
        finally:
            resp.close()
        return version
