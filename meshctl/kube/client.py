"""``KubeClient``: one kube context through the official ``kubernetes`` client, objects as dicts.

The thin adapter every meshctl command (install, connect, the connectivity suite's Kubernetes
driver) uses to reach a Kubernetes API server: the sync ``kubernetes`` client plus its
``DynamicClient``, so any kind the server's discovery lists is reachable by ``apiVersion`` and
``kind``. Objects go in and come out as plain JSON dicts. Writes are server-side apply
(``application/apply-patch+yaml``) under a field manager, so re-applying an unchanged object is
a no-op on the server (its resourceVersion stays). Every failure is a ``KubeError`` whose message
names the context, the kind, the namespace/name and the API's own Status message; a missing
context lists the known ones. Discovery is cached in memory only (the library's default writes a
cache file into /tmp).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import urllib3.exceptions
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.discovery import LazyDiscoverer
from kubernetes.dynamic.exceptions import (
    ResourceNotFoundError,
    ResourceNotUniqueError,
)

__all__ = [
    "DEFAULT_KUBECONFIG",
    "KubeClient",
    "KubeContextError",
    "KubeError",
    "resolve_kubeconfig",
]

DEFAULT_KUBECONFIG: Final = Path("~/.kube/config")
_LIST_PAGE: Final = 500
_APPLY_CONTENT_TYPE: Final = "application/apply-patch+yaml"
# The generated client is only partly annotated: reach it through Any, keep our surface typed.
_kube: Any = kube_config
_Dynamic: Any = DynamicClient


class KubeError(Exception):
    """A Kubernetes operation failed; the message names the context, object and the API's reason.

    ``status`` is the HTTP status when the API server answered (``None`` for config or network
    problems), so callers can tell "forbidden" from "not reachable" without parsing text.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KubeContextError(KubeError):
    """The kubeconfig or the named context is missing or unusable (bad input, not an outage)."""


class _MemoryDiscoverer(LazyDiscoverer):
    """The library's lazy discovery without its cache file in /tmp (one cache per client)."""

    def _write_cache(self) -> None:
        return None


def resolve_kubeconfig(kubeconfig: Path | None) -> str:
    """``--kubeconfig``, else ``$KUBECONFIG`` (may list several files), else ~/.kube/config."""
    if kubeconfig is not None:
        return str(kubeconfig.expanduser())
    from_env = os.environ.get("KUBECONFIG", "")
    if from_env:
        return from_env
    return str(DEFAULT_KUBECONFIG.expanduser())


def _status_message(e: ApiException) -> str:
    """The API's Status ``message`` (or the raw body / reason when it is not a Status)."""
    body = e.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body:
        try:
            doc = json.loads(body)
        except ValueError:
            return body.strip()[:300]
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            return str(doc["message"])
        return body.strip()[:300]
    return str(e.reason or "no reason given")


def _where(kind: str, name: str | None, namespace: str | None) -> str:
    if name is None:
        return f"{kind} in namespace {namespace}" if namespace else f"{kind} (all namespaces)"
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


class KubeClient:
    """One kube context: the official ``kubernetes`` client (sync) + ``DynamicClient``."""

    def __init__(self, api_client: Any, *, context: str, kubeconfig: str) -> None:
        self.context = context
        self.kubeconfig = kubeconfig
        self._api_client: Any = api_client
        self._dynamic: Any = None

    @classmethod
    def from_context(cls, context: str | None, *, kubeconfig: Path | None = None) -> KubeClient:
        """A client for ``context`` (``None``: the kubeconfig's current context).

        A missing kubeconfig, or a context it does not have, raises ``KubeError`` naming the
        file and listing the contexts it knows.
        """
        config_file = resolve_kubeconfig(kubeconfig)
        try:
            contexts, active = _kube.list_kube_config_contexts(config_file=config_file)
        except (ConfigException, OSError, ValueError, TypeError) as e:
            raise KubeContextError(f"cannot read kubeconfig {config_file}: {e}") from e
        known = sorted(str(c.get("name")) for c in contexts or [] if isinstance(c, dict))
        if context is None:
            if not isinstance(active, dict) or not active.get("name"):
                raise KubeContextError(
                    f"kubeconfig {config_file} has no current context; pick one of "
                    f"{', '.join(known) or '(none)'} with --kube-context"
                )
            context = str(active["name"])
        elif context not in known:
            raise KubeContextError(
                f"kube context {context!r} not found in {config_file}; known contexts: "
                f"{', '.join(known) or '(none)'}"
            )
        try:
            api_client = _kube.new_client_from_config(
                config_file=config_file, context=context, persist_config=False
            )
        except (ConfigException, OSError, ValueError, TypeError) as e:
            raise KubeContextError(
                f"kube context {context!r} in {config_file} is unusable: {e}"
            ) from e
        return cls(api_client, context=context, kubeconfig=config_file)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._api_client.close()

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def server(self) -> str:
        """The API server URL of this context."""
        return str(self._api_client.configuration.host)

    # -- the operations ------------------------------------------------------------------

    def apply(
        self, obj: dict[str, Any], *, field_manager: str = "meshctl", force: bool = True
    ) -> dict[str, Any]:
        """Server-side apply ``obj``; returns the object as the server now has it."""
        api_version, kind, name, namespace = self._identity(obj)
        resource = self._resource(api_version, kind, name, namespace)
        namespace = namespace if resource.namespaced else None
        where = _where(kind, name, namespace)
        if resource.namespaced and not namespace:
            raise KubeError(f"context {self.context}: {where} has no metadata.namespace")
        try:
            result = self._dyn().server_side_apply(
                resource,
                body=obj,
                name=name,
                namespace=namespace,
                field_manager=field_manager,
                force_conflicts=force,
            )
        except (ApiException, urllib3.exceptions.HTTPError) as e:
            raise self._error(e, "apply", where) from e
        return _as_dict(result)

    def apply_status(
        self, obj: dict[str, Any], *, field_manager: str = "meshctl"
    ) -> dict[str, Any]:
        """Server-side apply ``obj``'s ``status`` through the ``status`` subresource."""
        api_version, kind, name, namespace = self._identity(obj)
        resource = self._resource(api_version, kind, name, namespace)
        namespace = namespace if resource.namespaced else None
        where = _where(kind, name, namespace) + " (status)"
        path = resource.path(name=name, namespace=namespace) + "/status"
        try:
            result = self._dyn().request(
                "patch",
                path,
                body=obj,
                content_type=_APPLY_CONTENT_TYPE,
                field_manager=field_manager,
                force_conflicts=True,
            )
        except (ApiException, urllib3.exceptions.HTTPError) as e:
            raise self._error(e, "apply", where) from e
        return _as_dict(result)

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """The object, or ``None`` when it does not exist."""
        resource = self._resource(api_version, kind, name, namespace)
        namespace = namespace if resource.namespaced else None
        where = _where(kind, name, namespace)
        if resource.namespaced and not namespace:
            raise KubeError(f"context {self.context}: get {where}: a namespace is required")
        try:
            result = self._dyn().get(resource, name=name, namespace=namespace)
        except (ApiException, urllib3.exceptions.HTTPError) as e:
            if isinstance(e, ApiException) and e.status == 404:
                return None
            raise self._error(e, "get", where) from e
        return _as_dict(result)

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str = "",
    ) -> list[dict[str, Any]]:
        """Every object of ``kind`` (in ``namespace``, or all), paged with ``limit``/``continue``.

        Items carry ``apiVersion`` and ``kind`` (a list response leaves them out).
        """
        resource = self._resource(api_version, kind, None, namespace)
        namespace = namespace if resource.namespaced else None
        where = _where(kind, None, namespace)
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            try:
                page = _as_dict(
                    self._dyn().get(
                        resource,
                        namespace=namespace,
                        label_selector=label_selector or None,
                        limit=_LIST_PAGE,
                        _continue=token,
                    )
                )
            except (ApiException, urllib3.exceptions.HTTPError) as e:
                raise self._error(e, "list", where) from e
            for item in page.get("items") or []:
                if isinstance(item, dict):
                    items.append({"apiVersion": api_version, "kind": kind, **item})
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return items

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete the object (background propagation); ``False`` when it was already absent."""
        resource = self._resource(api_version, kind, name, namespace)
        namespace = namespace if resource.namespaced else None
        where = _where(kind, name, namespace)
        if resource.namespaced and not namespace:
            raise KubeError(f"context {self.context}: delete {where}: a namespace is required")
        try:
            self._dyn().delete(
                resource, name=name, namespace=namespace, propagation_policy="Background"
            )
        except (ApiException, urllib3.exceptions.HTTPError) as e:
            if isinstance(e, ApiException) and e.status == 404:
                return False
            raise self._error(e, "delete", where) from e
        return True

    # -- internals ------------------------------------------------------------------------

    def _dyn(self) -> Any:
        """The dynamic client, created (with discovery) on first use."""
        if self._dynamic is None:
            cache_file = os.path.join(os.sep, "nonexistent", f"cellmesh-discovery-{uuid.uuid4()}")
            try:
                self._dynamic = _Dynamic(
                    self._api_client, cache_file=cache_file, discoverer=_MemoryDiscoverer
                )
            except (ApiException, urllib3.exceptions.HTTPError) as e:
                raise self._error(e, "discover the API of", self.server) from e
        return self._dynamic

    def _resource(
        self, api_version: str, kind: str, name: str | None, namespace: str | None
    ) -> Any:
        try:
            return self._dyn().resources.get(api_version=api_version, kind=kind)
        except (ResourceNotFoundError, ResourceNotUniqueError) as e:
            raise KubeError(
                f"context {self.context}: {_where(kind, name, namespace)}: the API server does "
                f"not serve kind {kind} in {api_version}"
            ) from e
        except (ApiException, urllib3.exceptions.HTTPError) as e:
            raise self._error(e, "discover", f"{api_version} {kind}") from e

    def _identity(self, obj: dict[str, Any]) -> tuple[str, str, str, str | None]:
        api_version = obj.get("apiVersion")
        kind = obj.get("kind")
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        namespace = meta.get("namespace") if isinstance(meta, dict) else None
        if not isinstance(api_version, str) or not api_version:
            raise KubeError(f"context {self.context}: object {name or '?'} has no apiVersion")
        if not isinstance(kind, str) or not kind:
            raise KubeError(f"context {self.context}: object {name or '?'} has no kind")
        if not isinstance(name, str) or not name:
            raise KubeError(f"context {self.context}: a {kind} has no metadata.name")
        if namespace is not None and not isinstance(namespace, str):
            raise KubeError(f"context {self.context}: {kind} {name}: bad metadata.namespace")
        return api_version, kind, name, namespace or None

    def _error(self, e: Exception, verb: str, where: str) -> KubeError:
        if isinstance(e, ApiException):
            status = e.status if isinstance(e.status, int) else None
            return KubeError(
                f"context {self.context}: {verb} {where}: {status} {_status_message(e)}",
                status=status,
            )
        return KubeError(
            f"context {self.context}: {verb} {where}: API server {self.server} unreachable "
            f"({type(e).__name__}: {e})"
        )


def _as_dict(result: Any) -> dict[str, Any]:
    """A dynamic client result (``ResourceInstance``, or a decoded body) as a plain dict."""
    value = result.to_dict() if hasattr(result, "to_dict") else result
    if not isinstance(value, dict):
        return {}
    return value
