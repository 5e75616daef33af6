"""The HTTP shell of the Kubernetes API double: aiohttp handlers and chunked watch streams.

`KubeApiDouble` serves the `KubeApi` verbs on 127.0.0.1 with the URL layout, content types and
``Status`` errors of kube-apiserver, so the real ``kubernetes`` and ``kubernetes_asyncio``
clients (typed APIs, ``DynamicClient``, ``watch.Watch``) work through a kubeconfig unchanged.
A watch is a chunked stream of JSON lines fed by a store listener through an asyncio queue;
``allowWatchBookmarks`` adds a BOOKMARK every ``bookmark_interval`` seconds carrying the
resourceVersion the stream has caught up with.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import structlog
import yaml
from aiohttp import web

from meshctl.lab.kubeapi.api import APPLY_PATCH, KubeApi
from meshctl.lab.kubeapi.errors import KubeError, status_object
from meshctl.lab.kubeapi.queries import ListQuery, Projection, is_true, watch_projection
from meshctl.lab.kubeapi.resources import ResourceType
from meshctl.lab.kubeapi.routes import discovery, parse_body
from meshctl.lab.kubeapi.routes import route as resolve_route
from meshctl.lab.kubeapi.store import Event, Store

__all__ = ["KubeApiDouble", "is_loopback"]

log = structlog.get_logger(__name__)

_MAX_BODY = 16 * 1024 * 1024

# Aliases: KubeApiDouble.list (the interface) shadows the builtin inside the class.
_Objects = list[dict[str, Any]]
_Parts = list[str]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Watch:
    """One open watch: the store listener feeds its queue from whichever thread writes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def listener(self, event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the stream is gone
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(obj, separators=(",", ":")).encode(),
        content_type="application/json",
    )


def _error(e: KubeError) -> web.Response:
    return _json(e.status(), e.code)


async def _body(request: web.Request, content_type: str) -> Any:
    return parse_body(await request.read(), content_type)


class KubeApiDouble:
    """A Kubernetes API server double on 127.0.0.1 (see the package docstring)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bookmark_interval: float = 1.0,
        history: int = 10_000,
        service_cidr: str = "10.96.0.0/12",
    ) -> None:
        if not is_loopback(host):
            raise ValueError(f"the Kubernetes API double serves loopback only, not {host!r}")
        self._host = host
        self.port = port
        self._bookmark_interval = bookmark_interval
        self._store = Store(history=history, service_cidr=service_cidr)
        self._api = KubeApi(self._store)
        self._watches: set[_Watch] = set()
        self._runner: web.AppRunner | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self.port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("Kubernetes API double serving", url=self.url)

    async def stop(self) -> None:
        self.break_watches()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
            log.info("Kubernetes API double stopped", url=self.url)

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def write_kubeconfig(
        self,
        path: Path,
        *,
        context: str = "double",
        cluster: str = "double",
        namespace: str = "default",
    ) -> Path:
        """Write a kubeconfig (YAML) whose current context points at this double."""
        user = f"{cluster}-user"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": cluster, "cluster": {"server": self.url}}],
            "users": [{"name": user, "user": {}}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": cluster, "user": user, "namespace": namespace},
                }
            ],
            "current-context": context,
            "preferences": {},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.chmod(tmp, 0o600)
        tmp.replace(path)
        return path

    # -- direct access --------------------------------------------------------------------

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._api.put(obj)

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        return self._api.remove(api_version, kind, name, namespace)

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        return self._api.get(api_version, kind, name, namespace)

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> _Objects:
        return self._api.items(api_version, kind, namespace)

    def compact(self) -> int:
        return self._store.compact()

    def break_watches(self) -> None:
        for watch in list(self._watches):
            watch.close()

    @property
    def resource_version(self) -> int:
        return self._store.resource_version

    # -- HTTP -----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except KubeError as e:
            return _error(e)
        except Exception as e:  # a bug in the double: the client still gets a Status
            log.exception("Kubernetes API double request failed", method=request.method,
                          path=request.path)  # fmt: skip
            return _error(KubeError(500, "InternalError", f"{type(e).__name__}: {e}"))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        parts = [p for p in path.split("/") if p]
        method = request.method
        if not parts:
            return _json({"paths": ["/api", "/api/v1", "/apis", "/version", "/healthz"]})
        if method == "GET":
            document = self._discovery(parts)
            if document is not None:
                return document
        if parts[0] in ("healthz", "readyz", "livez") and len(parts) == 1:
            return web.Response(text="ok")
        route = resolve_route(path, parts)
        params = {k: request.query.get(k, "") for k in request.query}
        dry_run = params.get("dryRun") == "All"
        rt, ns, name = route.rt, route.namespace, route.name
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        if "protobuf" in content_type:
            raise KubeError(
                415, "UnsupportedMediaType",
                f"the Kubernetes API double reads JSON and YAML bodies only, not {content_type}",
            )  # fmt: skip
        if method == "GET":
            watch = route.legacy_watch or is_true(params.get("watch"))
            if name is not None:
                if watch:
                    raise KubeError.bad_request(
                        f"watch a single {rt.kind} with fieldSelector=metadata.name={name}"
                    )
                return _json(self._api.read(rt, ns, name))
            query = ListQuery(rt, params)
            if watch:
                return await self._serve_watch(request, rt, ns, query)
            return _json(self._api.list_objects(rt, ns, query))
        if method == "POST" and name is None:
            if rt.namespaced and ns is None:
                raise KubeError.method_not_allowed(method, path)
            return _json(
                self._api.create(rt, ns, await _body(request, content_type), dry_run=dry_run),
                201,
            )
        if method == "PUT" and name is not None:
            body = await _body(request, content_type)
            return _json(
                self._api.replace(
                    rt, ns, name, body, subresource=route.subresource, dry_run=dry_run
                )
            )
        if method == "PATCH" and name is not None:
            body = await _body(request, content_type)
            obj, created = self._api.patch(
                rt,
                ns,
                name,
                body,
                content_type,
                field_manager=params.get("fieldManager") or None,
                subresource=route.subresource,
                dry_run=dry_run,
            )
            return _json(obj, 201 if created and content_type == APPLY_PATCH else 200)
        if method == "DELETE":
            if name is None:
                return _json(self._api.delete_collection(rt, ns, ListQuery(rt, params)))
            raw = await request.read()
            options: Any = parse_body(raw, content_type) if raw.strip() else {}
            preconditions = options.get("preconditions") if isinstance(options, dict) else None
            return _json(
                self._api.delete(rt, ns, name, preconditions=preconditions, dry_run=dry_run)
            )
        raise KubeError.method_not_allowed(method, path)

    def _discovery(self, parts: _Parts) -> web.Response | None:
        found = discovery(parts, f"{self._host}:{self.port}")
        return None if found is None else _json(found)

    async def _serve_watch(
        self, request: web.Request, rt: ResourceType, ns: str | None, query: ListQuery
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        watch = _Watch(loop)
        project = watch_projection(rt, ns, query.matches)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        self._watches.add(watch)  # before subscribing: break_watches may come from any thread
        try:
            seen, initial = self._api.start_watch(rt, ns, query, watch.listener)
        except KubeError as e:
            self._watches.discard(watch)
            if e.code != 410:
                raise
            # As kube-apiserver: the stream opens, carries one ERROR event, and ends.
            await response.prepare(request)
            await _send(response, "ERROR", status_object(410, "Expired", e.message))
            await response.write_eof()
            return response
        try:
            await response.prepare(request)
            for event in initial:
                seen = max(seen, event.rv)
                projected = project(event)
                if projected is not None:
                    await _send(response, *projected)
            if query.send_initial_events and query.bookmarks:
                await _send(response, "BOOKMARK", _bookmark(rt, seen, initial_end=True))
            await self._stream(response, watch, project, query, rt, seen)
            await response.write_eof()
        except ConnectionError:  # the client went away; a cancelled handler unwinds below
            pass
        finally:
            self._watches.discard(watch)
            self._store.unsubscribe(watch.listener)
        return response

    async def _stream(
        self,
        response: web.StreamResponse,
        watch: _Watch,
        project: Projection,
        query: ListQuery,
        rt: ResourceType,
        seen: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + query.timeout_seconds if query.timeout_seconds else None
        next_bookmark = loop.time() + self._bookmark_interval
        while True:
            # Checked before every wait, so a busy stream still ends and still gets bookmarks.
            now = loop.time()
            if deadline is not None and now >= deadline:
                return
            if query.bookmarks and now >= next_bookmark:
                await _send(response, "BOOKMARK", _bookmark(rt, seen))
                next_bookmark = now + self._bookmark_interval
            wakeups = [t for t in (deadline, next_bookmark if query.bookmarks else None) if t]
            timeout = max(0.0, min(wakeups) - now) if wakeups else None
            try:
                event = await asyncio.wait_for(watch.queue.get(), timeout)
            except TimeoutError:
                continue
            if event is None:
                return
            seen = max(seen, event.rv)
            projected = project(event)
            if projected is not None:
                await _send(response, *projected)


def _bookmark(rt: ResourceType, rv: int, *, initial_end: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"resourceVersion": str(rv)}
    if initial_end:
        metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"apiVersion": rt.api_version, "kind": rt.kind, "metadata": metadata}


async def _send(response: web.StreamResponse, kind: str, obj: dict[str, Any]) -> None:
    line = json.dumps({"type": kind, "object": obj}, separators=(",", ":")) + "\n"
    await response.write(line.encode())
