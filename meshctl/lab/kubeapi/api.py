"""The verbs of the Kubernetes API double over its `Store`: what each request does, no HTTP.

get, list (selectors, ``limit``/``continue`` pages consistent at the first page's
resourceVersion, ``resourceVersion``/``resourceVersionMatch``), create, replace (409 on a stale
resourceVersion), patch (merge, strategic-as-merge, JSON patch, server-side apply), delete (a
Namespace takes everything in it along), deletecollection, the start of a watch, and the direct
``put``/``remove`` the lab and the tests use. Namespaced writes over the API need their Namespace
to exist (as on a real cluster); the direct ``put`` does not. The four namespaces every cluster
has exist from the start.
"""

from __future__ import annotations

import copy
from typing import Any

from meshctl.lab.kubeapi import patches
from meshctl.lab.kubeapi.errors import KubeError
from meshctl.lab.kubeapi.objects import now_timestamp, prepare, validate
from meshctl.lab.kubeapi.queries import (
    ListQuery,
    decode_continue,
    encode_continue,
    for_list,
    name_of,
)
from meshctl.lab.kubeapi.resources import RESOURCES, ResourceType, by_kind, by_path
from meshctl.lab.kubeapi.store import Event, Listener, Store

__all__ = ["APPLY_PATCH", "INITIAL_NAMESPACES", "KubeApi"]

INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_NAMESPACES = by_path("", "v1", "namespaces")
assert _NAMESPACES is not None
NAMESPACES: ResourceType = _NAMESPACES

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (MERGE_PATCH, STRATEGIC_PATCH, JSON_PATCH, APPLY_PATCH)


class KubeApi:
    def __init__(self, store: Store) -> None:
        self.store = store
        for namespace in INITIAL_NAMESPACES:
            self.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})

    # -- reads ----------------------------------------------------------------------------

    def read(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.store.get(rt, namespace, name)
        if obj is None:
            raise KubeError.not_found(rt.plural, name, rt.group)
        return obj

    def list_objects(
        self, rt: ResourceType, namespace: str | None, query: ListQuery
    ) -> dict[str, Any]:
        start: tuple[str, str] | None = None
        if query.continue_token:
            if query.resource_version:
                raise KubeError.bad_request(
                    "specifying resource version is not allowed when using continue"
                )
            at, start = decode_continue(query.continue_token)
            try:
                rv, objects = self.store.list_at(rt, namespace, at)
            except KubeError as e:
                raise KubeError.expired(
                    "The provided continue parameter is too old to display a consistent list "
                    f"result. You can start a new list without the continue parameter. ({e})"
                ) from None
        else:
            wanted = query.rv
            current = self.store.resource_version
            if wanted is not None and wanted > current:
                raise KubeError(
                    504, "Timeout", f"Too large resource version: {wanted}, current: {current}"
                )
            exact = query.rv_match == "Exact" and wanted is not None
            rv, objects = self.store.list_at(rt, namespace, wanted if exact else None)
        matched = [o for o in objects if query.matches(o) and (start is None or name_of(o) > start)]
        metadata: dict[str, Any] = {"resourceVersion": str(rv)}
        if query.limit and len(matched) > query.limit:
            page = matched[: query.limit]
            metadata["continue"] = encode_continue(rv, name_of(page[-1]))
            if not query.label_selector and not query.field_selector:
                metadata["remainingItemCount"] = len(matched) - len(page)
            matched = page
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": metadata,
            "items": [for_list(o) for o in matched],
        }

    def start_watch(
        self, rt: ResourceType, namespace: str | None, query: ListQuery, listener: Listener
    ) -> tuple[int, list[Event]]:
        """Subscribe ``listener``; returns the start rv and the events to send first.

        No resourceVersion (or "0", or sendInitialEvents): a synthetic ADDED for every current
        object; otherwise the history after that version (410 Expired if it is gone).
        """
        with self.store.lock:
            synthetic = query.rv in (None, 0) or query.send_initial_events
            rv, replay = self.store.subscribe(listener, None if synthetic else query.rv)
            if synthetic:
                replay = [
                    Event(rv, "ADDED", rt, obj, None) for obj in self.store.items(rt, namespace)
                ]
            return rv, replay

    # -- writes ---------------------------------------------------------------------------

    def _require_namespace(self, rt: ResourceType, namespace: str | None) -> None:
        if rt.namespaced and self.store.get(NAMESPACES, None, namespace or "") is None:
            raise KubeError.not_found("namespaces", namespace or "")

    def create(
        self, rt: ResourceType, namespace: str | None, body: Any, *, dry_run: bool = False
    ) -> dict[str, Any]:
        if isinstance(body, dict):
            metadata = body.get("metadata")
            if (
                isinstance(metadata, dict)
                and not metadata.get("name")
                and metadata.get("generateName")
            ):
                body = copy.deepcopy(body)
                body["metadata"]["name"] = (
                    f"{metadata['generateName']}{self.store.resource_version + 1:05x}"
                )
        validate(rt, body, namespace=namespace)
        name = body["metadata"]["name"]
        with self.store.lock:
            self._require_namespace(rt, namespace)
            if self.store.get(rt, namespace, name) is not None:
                raise KubeError.already_exists(rt.plural, name, rt.group)
            obj = prepare(
                rt,
                body,
                None,
                namespace=namespace,
                allocate_cluster_ip=self.store.allocate_cluster_ip,
            )
            return obj if dry_run else self._commit(rt, namespace, name, obj)

    def replace(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        validate(rt, body, namespace=namespace, name=name)
        with self.store.lock:
            old = self.read(rt, namespace, name)
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise KubeError.conflict(
                    rt.plural,
                    name,
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again",
                    rt.group,
                )
            if "managedFields" not in body["metadata"] and "managedFields" in old["metadata"]:
                body = {
                    **body,
                    "metadata": {
                        **body["metadata"],
                        "managedFields": old["metadata"]["managedFields"],
                    },
                }
            obj = prepare(
                rt,
                body,
                old,
                namespace=namespace,
                subresource=subresource,
                allocate_cluster_ip=self.store.allocate_cluster_ip,
            )
            return obj if dry_run else self._commit(rt, namespace, name, obj)

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        patch: Any,
        content_type: str,
        *,
        field_manager: str | None,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """The patched object, and whether the patch created it (server-side apply only)."""
        if content_type not in PATCH_TYPES:
            raise KubeError.unsupported_media(content_type)
        if content_type == APPLY_PATCH:
            return self._apply(rt, namespace, name, patch, field_manager, subresource, dry_run)
        with self.store.lock:
            old = self.read(rt, namespace, name)
            if content_type == JSON_PATCH:
                result = patches.json_patch(old, patch)
            else:
                if not isinstance(patch, dict):
                    raise KubeError.bad_request(
                        f"a merge patch must be a JSON object, got {type(patch).__name__}"
                    )
                result = patches.merge_patch(old, patch)
            validate(rt, result, namespace=namespace, name=name)
            wanted = (
                (patch.get("metadata") or {}).get("resourceVersion")
                if isinstance(patch, dict)
                else None
            )
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise KubeError.conflict(
                    rt.plural,
                    name,
                    "the object has been modified; please apply your changes "
                    "to the latest version and try again",
                    rt.group,
                )
            obj = prepare(
                rt,
                result,
                old,
                namespace=namespace,
                subresource=subresource,
                allocate_cluster_ip=self.store.allocate_cluster_ip,
            )
            return (obj if dry_run else self._commit(rt, namespace, name, obj)), False

    def _apply(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        applied: Any,
        field_manager: str | None,
        subresource: str | None,
        dry_run: bool,
    ) -> tuple[dict[str, Any], bool]:
        if not field_manager:
            raise KubeError.bad_request(
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                "is required for apply patch"
            )
        validate(rt, applied, namespace=namespace, name=name)
        with self.store.lock:
            old = self.store.get(rt, namespace, name)
            if old is None:
                self._require_namespace(rt, namespace)
            result = patches.apply(old, applied, manager=field_manager, now=now_timestamp())
            obj = prepare(
                rt,
                result,
                old,
                namespace=namespace,
                subresource=subresource,
                allocate_cluster_ip=self.store.allocate_cluster_ip,
            )
            if dry_run:
                return obj, old is None
            return self._commit(rt, namespace, name, obj), old is None

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        preconditions: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        with self.store.lock:
            old = self.read(rt, namespace, name)
            for field in ("uid", "resourceVersion"):
                wanted = (preconditions or {}).get(field)
                if wanted and wanted != old["metadata"].get(field):
                    raise KubeError.conflict(
                        rt.plural,
                        name,
                        f"Precondition failed: {field} in precondition: {wanted}, "
                        f"{field} in object meta: {old['metadata'].get(field)}",
                        rt.group,
                    )
            if dry_run:
                return old
            if rt is NAMESPACES:
                self._delete_namespace_contents(name)
            event = self.store.commit(rt, namespace, name, None)
            return event.obj if event is not None else old

    def _delete_namespace_contents(self, namespace: str) -> None:
        for rt in RESOURCES:
            if rt.namespaced:
                for obj in self.store.items(rt, namespace):
                    self.store.commit(rt, namespace, obj["metadata"]["name"], None)

    def delete_collection(
        self, rt: ResourceType, namespace: str | None, query: ListQuery
    ) -> dict[str, Any]:
        with self.store.lock:
            deleted = [
                self.delete(rt, o["metadata"].get("namespace"), o["metadata"]["name"])
                for o in self.store.items(rt, namespace)
                if query.matches(o)
            ]
            return {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": [for_list(o) for o in deleted],
            }

    def _commit(
        self, rt: ResourceType, namespace: str | None, name: str, obj: dict[str, Any]
    ) -> dict[str, Any]:
        event = self.store.commit(rt, namespace, name, obj)
        if event is not None:
            return event.obj
        stored = self.store.get(rt, namespace, name)
        assert stored is not None
        return stored

    # -- direct access (no HTTP) ----------------------------------------------------------

    @staticmethod
    def resource_for(api_version: str, kind: str) -> ResourceType:
        rt = by_kind(api_version, kind)
        if rt is None:
            raise KubeError.bad_request(f"the API double does not serve {kind} in {api_version!r}")
        return rt

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace ``obj`` (status included, no namespace check); the stored copy."""
        if not isinstance(obj, dict):
            raise KubeError.bad_request(f"put needs an object, got {type(obj).__name__}")
        rt = self.resource_for(str(obj.get("apiVersion")), str(obj.get("kind")))
        raw_metadata = obj.get("metadata")
        metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
        namespace = (metadata.get("namespace") or "default") if rt.namespaced else None
        validate(rt, obj, namespace=namespace)
        name = metadata["name"]
        with self.store.lock:
            old = self.store.get(rt, namespace, name)
            prepared = prepare(
                rt,
                obj,
                old,
                namespace=namespace,
                status_from_body=True,
                allocate_cluster_ip=self.store.allocate_cluster_ip,
            )
            return copy.deepcopy(self._commit(rt, namespace, name, prepared))

    def remove(self, api_version: str, kind: str, name: str, namespace: str | None) -> bool:
        rt = self.resource_for(api_version, kind)
        ns = (namespace or "default") if rt.namespaced else None
        with self.store.lock:
            if self.store.get(rt, ns, name) is None:
                return False
            self.delete(rt, ns, name)
            return True

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        rt = self.resource_for(api_version, kind)
        obj = self.store.get(rt, (namespace or "default") if rt.namespaced else None, name)
        return copy.deepcopy(obj) if obj is not None else None

    def items(self, api_version: str, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        rt = self.resource_for(api_version, kind)
        return copy.deepcopy(self.store.items(rt, namespace if rt.namespaced else None))
