"""The Kubernetes API double against the real clients: ``kubernetes`` (sync, typed and dynamic)
through `KubeApiThread`, ``kubernetes_asyncio`` against a `KubeApiDouble` in the test's loop, and
``python -m meshctl.lab.kubeapi`` as a process. The pure parts (selectors, patches) are
table-driven at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.dynamic import DynamicClient
from kubernetes_asyncio import client as ak8s
from kubernetes_asyncio import config as ak8s_config
from kubernetes_asyncio import watch as ak8s_watch

from meshctl.lab.kubeapi import KubeApiDouble, KubeApiThread, KubeError, main
from meshctl.lab.kubeapi.patches import apply, json_patch, merge_patch
from meshctl.lab.kubeapi.selectors import parse_field_selector, parse_label_selector

pytestmark = pytest.mark.timeout(30)


class Cluster:
    """A running double and a real sync client configured from its kubeconfig."""

    def __init__(self, double: KubeApiDouble, tmp: Path) -> None:
        self.double = double
        self.kubeconfig = double.write_kubeconfig(tmp / "kubeconfig", context="cell-1")
        self.api = k8s_config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core = k8s.CoreV1Api(self.api)
        self.discovery = k8s.DiscoveryV1Api(self.api)
        self.tmp = tmp

    def dynamic(self) -> DynamicClient:
        # A private discovery cache: the default one is a file per server URL in /tmp.
        return DynamicClient(self.api, cache_file=str(self.tmp / "discovery.json"))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with KubeApiThread(bookmark_interval=0.1) as double:
        c = Cluster(double, tmp_path)
        try:
            yield c
        finally:
            c.api.close()


def service(name: str, namespace: str = "default", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }


def api_error(call: Any, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(k8s.ApiException) as caught:
        call(*args, **kwargs)
    return caught.value.status, json.loads(caught.value.body)


def raw_request(cluster: Cluster, method: str, path: str, body: bytes, content_type: str) -> Any:
    """A request the typed clients would not send (bad bodies, odd content types)."""
    return cluster.api.rest_client.pool_manager.request(
        method, cluster.double.url + path, body=body, headers={"Content-Type": content_type}
    )


# -- CRUD -----------------------------------------------------------------------------------


def test_kubeconfig_context_and_discovery(cluster: Cluster) -> None:
    _, current = k8s_config.list_kube_config_contexts(str(cluster.kubeconfig))
    assert current["name"] == "cell-1"
    assert current["context"]["namespace"] == "default"
    version = k8s.VersionApi(cluster.api).get_code()
    assert version.major == "1"
    dyn = cluster.dynamic()
    slices = dyn.resources.get(api_version="discovery.k8s.io/v1", kind="EndpointSlice")
    assert slices.namespaced
    assert slices.name == "endpointslices"
    assert dyn.resources.get(api_version="v1", kind="Service").subresources["status"]
    assert not dyn.resources.get(
        api_version="rbac.authorization.k8s.io/v1", kind="ClusterRole"
    ).namespaced


def test_crud_namespace_service_node_endpointslice(cluster: Cluster) -> None:
    ns = cluster.core.create_namespace(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}
    )
    assert ns.status.phase == "Active"
    created = cluster.core.create_namespaced_service("demo", service("echo", "demo", app="echo"))
    assert created.spec.cluster_ip.startswith("10.96.")
    assert created.spec.ports[0].protocol == "TCP"
    assert created.metadata.uid
    assert created.metadata.generation == 1
    rv1 = int(created.metadata.resource_version)

    created.metadata.annotations = {"service.cilium.io/global": "true"}
    replaced = cluster.core.replace_namespaced_service("echo", "demo", created)
    assert replaced.metadata.annotations == {"service.cilium.io/global": "true"}
    assert int(replaced.metadata.resource_version) > rv1
    assert replaced.spec.cluster_ip == created.spec.cluster_ip

    patched = cluster.core.patch_namespaced_service(
        "echo", "demo", {"spec": {"ports": [{"name": "http", "port": 8080}]}}
    )
    assert patched.spec.ports[0].port == 8080
    assert patched.metadata.generation == 2  # the spec changed; the annotation did not count

    status = cluster.core.patch_namespaced_service_status(
        "echo", "demo", {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}
    )
    assert status.status.load_balancer.ingress[0].ip == "192.0.2.10"
    assert status.spec.ports[0].port == 8080

    node = cluster.core.create_node(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "node-1"},
            "spec": {"podCIDRs": ["10.1.0.0/24"]},
        }
    )
    assert node.spec.pod_cidrs == ["10.1.0.0/24"]
    eps = cluster.discovery.create_namespaced_endpoint_slice(
        "demo",
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "echo-abc", "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.1.0.5"], "conditions": {"ready": True}, "nodeName": "node-1"}
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        },
    )
    assert eps.endpoints[0].conditions.ready is True
    got = cluster.discovery.read_namespaced_endpoint_slice("echo-abc", "demo")
    assert got.metadata.resource_version == eps.metadata.resource_version

    # The direct view is the same storage.
    assert cluster.double.get("v1", "Node", "node-1")["spec"]["podCIDRs"] == ["10.1.0.0/24"]
    assert [s["metadata"]["name"] for s in cluster.double.list("v1", "Service", "demo")] == ["echo"]

    deleted = cluster.core.delete_namespaced_service("echo", "demo")
    assert deleted.metadata.name == "echo"  # the deleted object, as kube-apiserver returns it
    assert cluster.double.get("v1", "Service", "echo", "demo") is None
    cluster.core.delete_node("node-1")
    assert cluster.core.list_node().items == []


def test_deleting_a_namespace_deletes_its_objects(cluster: Cluster) -> None:
    cluster.double.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gone"}})
    cluster.double.put(service("a", "gone"))
    cluster.double.put(service("b", "default"))
    cluster.core.delete_namespace("gone")
    assert cluster.double.list("v1", "Service", "gone") == []
    assert [s["metadata"]["name"] for s in cluster.double.list("v1", "Service")] == ["b"]


def test_put_is_idempotent_and_keeps_status(cluster: Cluster) -> None:
    obj = service("lb")
    obj["status"] = {"loadBalancer": {"ingress": [{"hostname": "nlb.example"}]}}
    first = cluster.double.put(obj)
    again = cluster.double.put(obj)
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    read = cluster.core.read_namespaced_service("lb", "default")
    assert read.status.load_balancer.ingress[0].hostname == "nlb.example"
    assert cluster.double.resource_version == int(first["metadata"]["resourceVersion"])


# -- errors ---------------------------------------------------------------------------------


def test_errors_arrive_as_status(cluster: Cluster) -> None:
    code, status = api_error(cluster.core.read_namespaced_service, "nope", "default")
    assert (code, status["reason"], status["kind"]) == (404, "NotFound", "Status")
    assert 'services "nope" not found' in status["message"]

    cluster.core.create_namespaced_service("default", service("dup"))
    code, status = api_error(cluster.core.create_namespaced_service, "default", service("dup"))
    assert (code, status["reason"]) == (409, "AlreadyExists")

    stale = cluster.core.read_namespaced_service("dup", "default")
    cluster.core.patch_namespaced_service("dup", "default", {"metadata": {"labels": {"v": "2"}}})
    code, status = api_error(cluster.core.replace_namespaced_service, "dup", "default", stale)
    assert (code, status["reason"]) == (409, "Conflict")
    assert "the object has been modified" in status["message"]

    code, status = api_error(
        cluster.core.create_namespaced_service, "default", service("Not_A_Name")
    )
    assert (code, status["reason"]) == (422, "Invalid")
    assert "metadata.name" in status["message"]
    assert status["details"]["causes"][0]["field"] == "metadata.name"

    wrong_kind = {**service("x"), "kind": "ConfigMap"}
    code, status = api_error(cluster.core.create_namespaced_service, "default", wrong_kind)
    assert code == 422
    assert "kind" in status["message"]

    code, status = api_error(
        cluster.core.create_namespaced_service, "default", service("y", "other")
    )
    assert code == 422
    assert "metadata.namespace" in status["message"]

    code, status = api_error(
        cluster.core.create_namespaced_service, "absent", service("z", "absent")
    )
    assert (code, status["message"]) == (404, 'namespaces "absent" not found')

    code, status = api_error(
        cluster.core.list_namespaced_service, "default", label_selector="a in b"
    )
    assert code == 400
    assert "a in b" in status["message"]

    response = raw_request(
        cluster, "PATCH", "/api/v1/namespaces/default/services/dup", b'{"a": 1}', "application/xml"
    )
    assert response.status == 415
    assert json.loads(response.data)["reason"] == "UnsupportedMediaType"


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "code", "reason"),
    [
        pytest.param("POST", "/api/v1/namespaces/default/configmaps", b"[1, 2]",
                     "application/json", 422, "Invalid", id="not-an-object"),
        pytest.param("POST", "/api/v1/namespaces/default/configmaps", b"{not json",
                     "application/json", 400, "BadRequest", id="not-json"),
        pytest.param("PATCH", "/api/v1/namespaces/default/configmaps/c", b"a: [",
                     "application/apply-patch+yaml", 400, "BadRequest", id="not-yaml"),
        pytest.param("POST", "/api/v1/services", b"{}", "application/json", 405,
                     "MethodNotAllowed", id="namespaced-kind-without-namespace"),
        pytest.param("GET", "/apis/example.com/v1/widgets", b"", "application/json", 404,
                     "NotFound", id="unknown-resource"),
        pytest.param("GET", "/api/v1/namespaces/default/services/x/proxy", b"",
                     "application/json", 404, "NotFound", id="unknown-subresource"),
        pytest.param("DELETE", "/api/v1/namespaces/default", b"{oops", "application/json", 400,
                     "BadRequest", id="bad-delete-options"),
    ],
)  # fmt: skip
def test_malformed_requests_get_a_status_not_a_crash(
    cluster: Cluster, method: str, path: str, body: bytes, content_type: str, code: int,
    reason: str,
) -> None:  # fmt: skip
    response = raw_request(cluster, method, path, body, content_type)
    status = json.loads(response.data)
    assert response.status == code, status
    assert (status["kind"], status["reason"], status["code"]) == ("Status", reason, code)
    assert cluster.core.list_namespaced_config_map("default").items == []
    assert cluster.core.read_namespace("default").metadata.name == "default"


# -- lists ----------------------------------------------------------------------------------


def test_paged_list_is_consistent_at_its_first_version(cluster: Cluster) -> None:
    for i in range(7):
        cluster.double.put(service(f"s{i}", i=str(i)))
    first = cluster.core.list_namespaced_service("default", limit=3)
    assert [s.metadata.name for s in first.items] == ["s0", "s1", "s2"]
    assert first.metadata.remaining_item_count == 4
    rv = first.metadata.resource_version
    # Changes between pages are not seen by the rest of the paged list.
    cluster.double.delete("v1", "Service", "s4", "default")
    cluster.double.put(service("s9"))
    names = [s.metadata.name for s in first.items]
    token = first.metadata._continue
    while token:
        page = cluster.core.list_namespaced_service("default", limit=3, _continue=token)
        assert page.metadata.resource_version == rv
        names += [s.metadata.name for s in page.items]
        token = page.metadata._continue
    assert names == [f"s{i}" for i in range(7)]
    assert "s9" in [s.metadata.name for s in cluster.core.list_namespaced_service("default").items]

    # A continue token whose version was compacted away is 410 Expired.
    again = cluster.core.list_namespaced_service("default", limit=2)
    cluster.double.put(service("s10"))
    cluster.double.compact()
    code, status = api_error(
        cluster.core.list_namespaced_service, "default", limit=2, _continue=again.metadata._continue
    )
    assert (code, status["reason"]) == (410, "Expired")


def test_list_at_an_exact_older_version(cluster: Cluster) -> None:
    cluster.double.put(service("a"))
    rv = cluster.double.resource_version
    cluster.double.put(service("b"))
    old = cluster.core.list_namespaced_service(
        "default", resource_version=str(rv), resource_version_match="Exact"
    )
    assert [s.metadata.name for s in old.items] == ["a"]
    cluster.double.compact()
    code, _ = api_error(
        cluster.core.list_namespaced_service,
        "default",
        resource_version=str(rv),
        resource_version_match="Exact",
    )
    assert code == 410


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        pytest.param("app=echo", ["a", "b"], id="equals"),
        pytest.param("app==echo,tier=web", ["a"], id="double-equals-and"),
        pytest.param("tier!=web", ["b", "c", "d"], id="not-equals-includes-unlabelled"),
        pytest.param("tier in (web,db)", ["a", "b"], id="in"),
        pytest.param("tier notin (web)", ["b", "c", "d"], id="notin"),
        pytest.param("tier", ["a", "b"], id="exists"),
        pytest.param("!tier", ["c", "d"], id="not-exists"),
    ],
)
def test_label_selectors(cluster: Cluster, selector: str, expected: list[str]) -> None:
    cluster.double.put(service("a", app="echo", tier="web"))
    cluster.double.put(service("b", app="echo", tier="db"))
    cluster.double.put(service("c", app="other"))
    cluster.double.put(service("d"))
    items = cluster.core.list_service_for_all_namespaces(label_selector=selector).items
    assert [s.metadata.name for s in items] == expected


def test_field_selectors(cluster: Cluster) -> None:
    cluster.double.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    cluster.double.put(service("a"))
    cluster.double.put(service("a", "other"))
    cluster.double.put(service("b", "other"))
    by_name = cluster.core.list_service_for_all_namespaces(field_selector="metadata.name=a")
    assert [s.metadata.namespace for s in by_name.items] == ["default", "other"]
    by_ns = cluster.core.list_service_for_all_namespaces(
        field_selector="metadata.namespace!=default"
    )
    assert [s.metadata.name for s in by_ns.items] == ["a", "b"]
    code, status = api_error(
        cluster.core.list_service_for_all_namespaces, field_selector="spec.x=1"
    )
    assert code == 400
    assert "spec.x" in status["message"]


# -- watches --------------------------------------------------------------------------------


def test_watch_replays_streams_and_bookmarks(cluster: Cluster) -> None:
    start = cluster.core.list_namespaced_service("default").metadata.resource_version
    cluster.core.create_namespaced_service("default", service("w"))
    cluster.core.patch_namespaced_service("w", "default", {"metadata": {"labels": {"v": "2"}}})
    cluster.core.delete_namespaced_service("w", "default")
    deleted_at = cluster.double.resource_version

    seen: list[tuple[str, str | None]] = []
    bookmarks: list[int] = []
    w = k8s_watch.Watch()
    for event in w.stream(
        cluster.core.list_namespaced_service,
        "default",
        resource_version=start,
        allow_watch_bookmarks=True,
        timeout_seconds=10,
    ):
        raw = event["raw_object"]
        if event["type"] == "BOOKMARK":
            assert set(raw) == {"apiVersion", "kind", "metadata"}
            bookmarks.append(int(raw["metadata"]["resourceVersion"]))
            if len(bookmarks) == 1:
                # A write the watch does not show (another namespace) still advances bookmarks.
                cluster.double.put(service("elsewhere", "kube-system"))
            if bookmarks[-1] > deleted_at:
                w.stop()
        else:
            seen.append((event["type"], raw["metadata"]["name"]))
    assert seen == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
    assert bookmarks[0] == deleted_at
    assert bookmarks == sorted(bookmarks)
    assert bookmarks[-1] == cluster.double.resource_version
    assert w.resource_version == str(bookmarks[-1])  # the client resumes from the bookmark


def test_watch_without_version_starts_with_the_current_objects(cluster: Cluster) -> None:
    cluster.double.put(service("old", app="x"))
    cluster.double.put(service("skip", app="y"))
    events: list[tuple[str, str]] = []
    w = k8s_watch.Watch()
    for event in w.stream(
        cluster.core.list_namespaced_service, "default", label_selector="app=x", timeout_seconds=10
    ):
        events.append((event["type"], event["object"].metadata.name))
        if len(events) == 1:
            cluster.double.put(service("new", app="x"))
        else:
            w.stop()
    assert events == [("ADDED", "old"), ("ADDED", "new")]


def test_watch_from_a_compacted_version_raises_410(cluster: Cluster) -> None:
    cluster.double.put(service("a"))
    old = cluster.core.list_namespaced_service("default").metadata.resource_version
    cluster.double.put(service("b"))
    assert cluster.double.compact() == cluster.double.resource_version
    # No timeout: the client retries once after a 410 (as it does), then raises.
    stream = k8s_watch.Watch().stream(
        cluster.core.list_namespaced_service, "default", resource_version=old
    )
    with pytest.raises(k8s.ApiException) as caught:
        next(stream)
    assert caught.value.status == 410
    assert "too old resource version" in caught.value.reason


def test_history_is_bounded(tmp_path: Path) -> None:
    with KubeApiThread(history=3) as double:
        cluster = Cluster(double, tmp_path)
        with contextlib.closing(cluster.api):
            start = double.resource_version
            for i in range(5):
                double.put(service(f"h{i}"))
            recent = double.resource_version - 3
            replayed = [
                e["object"].metadata.name
                for e in k8s_watch.Watch().stream(cluster.core.list_namespaced_service, "default",
                                                  resource_version=str(recent), timeout_seconds=1)
            ]  # fmt: skip
            assert replayed == ["h2", "h3", "h4"]
            stream = k8s_watch.Watch().stream(
                cluster.core.list_namespaced_service, "default", resource_version=str(start)
            )
            with pytest.raises(k8s.ApiException) as caught:
                next(stream)
            assert caught.value.status == 410


def test_stop_ends_a_watch_in_progress(tmp_path: Path) -> None:
    ended = threading.Event()
    first_event = threading.Event()

    with KubeApiThread() as double:
        cluster = Cluster(double, tmp_path)
        double.put(service("a"))

        def consume() -> None:
            with contextlib.suppress(Exception):  # the client may fail to re-watch: server gone
                for _ in k8s_watch.Watch().stream(
                    cluster.core.list_namespaced_service, "default", timeout_seconds=25
                ):
                    first_event.set()
            ended.set()

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        assert first_event.wait(5)
        began = time.monotonic()
    assert time.monotonic() - began < 5
    assert ended.wait(5)
    cluster.api.close()


def test_break_watches_ends_open_streams(cluster: Cluster) -> None:
    cluster.double.put(service("a"))
    began = time.monotonic()
    events = []
    for event in k8s_watch.Watch().stream(
        cluster.core.list_namespaced_service, "default", timeout_seconds=25
    ):
        events.append(event["type"])
        cluster.double.break_watches()
    assert events == ["ADDED"]
    assert time.monotonic() - began < 5


def test_client_rewatches_after_a_broken_stream(cluster: Cluster) -> None:
    cluster.double.put(service("a"))
    events: list[tuple[str, str]] = []
    w = k8s_watch.Watch()
    # No timeout: when the server ends the stream, the client watches again from its last
    # resourceVersion and sees what happened in between.
    for event in w.stream(cluster.core.list_namespaced_service, "default"):
        events.append((event["type"], event["object"].metadata.name))
        if len(events) == 1:
            cluster.double.break_watches()
            cluster.double.put(service("b"))
        else:
            w.stop()
    assert events == [("ADDED", "a"), ("ADDED", "b")]


def test_watch_timeout_ends_the_stream_cleanly(cluster: Cluster) -> None:
    began = time.monotonic()
    events = list(
        k8s_watch.Watch().stream(cluster.core.list_namespaced_service, "default", timeout_seconds=1)
    )
    assert events == []
    assert 0.9 < time.monotonic() - began < 5


# -- server-side apply ----------------------------------------------------------------------


def test_server_side_apply_creates_updates_and_is_idempotent(cluster: Cluster) -> None:
    services = cluster.dynamic().resources.get(api_version="v1", kind="Service")
    body = service("applied", app="echo")
    body["metadata"]["annotations"] = {"service.cilium.io/global": "true"}
    created = services.server_side_apply(body=body, field_manager="meshctl")
    rv = created.metadata.resourceVersion
    assert created.spec.clusterIP
    [entry] = created.metadata.managedFields
    assert (entry.manager, entry.operation) == ("meshctl", "Apply")

    again = services.server_side_apply(body=body, field_manager="meshctl")
    assert again.metadata.resourceVersion == rv  # nothing changed: no new version, no event

    # Another manager adds a label; the first manager drops its annotation.
    services.patch(
        body={
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "applied", "labels": {"team": "a"}},
        },
        namespace="default",
        content_type="application/apply-patch+yaml",
        field_manager="other",
    )
    del body["metadata"]["annotations"]
    body["spec"]["ports"][0]["port"] = 8080
    updated = services.server_side_apply(body=body, field_manager="meshctl")
    assert int(updated.metadata.resourceVersion) > int(rv)
    assert updated.spec.ports[0].port == 8080
    assert updated.spec.ports[0].protocol == "TCP"
    assert dict(updated.metadata.labels) == {"app": "echo", "team": "a"}
    assert not updated.metadata.annotations
    assert sorted(e.manager for e in updated.metadata.managedFields) == ["meshctl", "other"]

    with pytest.raises(k8s.ApiException) as caught:
        services.server_side_apply(body=body, field_manager="")
    assert caught.value.status == 400
    assert "fieldManager" in caught.value.body


def test_apply_merges_containers_by_name(cluster: Cluster) -> None:
    deployments = cluster.dynamic().resources.get(api_version="apps/v1", kind="Deployment")
    pod = {"containers": [{"name": "meshapi", "image": "a:1"}, {"name": "etcd", "image": "e:1"}]}
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "meshapi", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "m"}}, "template": {"spec": pod}},
    }
    deployments.server_side_apply(body=body, field_manager="a")
    deployments.server_side_apply(
        body={
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "meshapi"},
            "spec": {"template": {"spec": {"containers": [{"name": "etcd", "image": "e:2"}]}}},
        },
        namespace="default",
        field_manager="b",
        force_conflicts=True,
    )
    got = cluster.double.get("apps/v1", "Deployment", "meshapi", "default")
    assert got is not None
    images = {c["name"]: c["image"] for c in got["spec"]["template"]["spec"]["containers"]}
    assert images == {"meshapi": "a:1", "etcd": "e:2"}
    assert got["metadata"]["generation"] == 2


# -- asyncio client -------------------------------------------------------------------------


async def test_asyncio_client_lists_and_watches(tmp_path: Path) -> None:
    double = KubeApiDouble(bookmark_interval=0.1)
    await double.start()
    try:
        kubeconfig = double.write_kubeconfig(tmp_path / "kc")
        api = await ak8s_config.new_client_from_config(config_file=str(kubeconfig))
        async with api:
            core = ak8s.CoreV1Api(api)
            for i in range(5):
                await core.create_node(
                    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"n{i}"}}
                )
            page = await core.list_node(limit=2)
            rest = await core.list_node(limit=10, _continue=page.metadata._continue)
            names = [n.metadata.name for n in page.items + rest.items]
            assert names == [f"n{i}" for i in range(5)]

            # An object that starts matching the selector is ADDED; one that stops is DELETED.
            async def change() -> None:
                await core.patch_node("n1", {"metadata": {"labels": {"role": "mesh"}}})
                await core.patch_node("n1", {"metadata": {"labels": {"role": None}}})

            events: list[tuple[str, str]] = []
            w = ak8s_watch.Watch()
            task: asyncio.Task[None] | None = None
            async with w.stream(
                core.list_node,
                label_selector="role=mesh",
                resource_version=page.metadata.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=10,
            ) as stream:
                async for event in stream:
                    if event["type"] == "BOOKMARK":
                        if task is None:
                            task = asyncio.create_task(change())
                        continue
                    events.append((event["type"], event["object"].metadata.name))
                    if len(events) == 2:
                        double.break_watches()
            assert task is not None
            await task
            assert events == [("ADDED", "n1"), ("DELETED", "n1")]
    finally:
        await double.stop()


# -- the process ----------------------------------------------------------------------------


def test_module_runs_as_a_process_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshctl.lab.kubeapi",
            "--listen",
            "127.0.0.1:0",
            "--kubeconfig",
            str(kubeconfig),
            "--context",
            "cell-2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "the double printed no URL within 15 s"
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        api = k8s_config.new_client_from_config(config_file=str(kubeconfig), context="cell-2")
        with contextlib.closing(api):
            names = [n.metadata.name for n in k8s.CoreV1Api(api).list_namespace().items]
        assert "default" in names
        assert "kube-system" in names
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_refuses_a_non_loopback_address(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="loopback"):
        KubeApiDouble(host="0.0.0.0")
    with pytest.raises(SystemExit) as caught:
        main(["--listen", "0.0.0.0:0"])
    assert caught.value.code == 2
    assert "loopback only" in capsys.readouterr().err


def test_thread_is_usable_from_another_thread(tmp_path: Path) -> None:
    with KubeApiThread() as double:
        failures: list[BaseException] = []

        def writer() -> None:
            try:
                for i in range(50):
                    double.put(service(f"t{i}"))
            except BaseException as e:  # reported below
                failures.append(e)

        threads = [threading.Thread(target=writer) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures
        assert len(double.list("v1", "Service", "default")) == 50


# -- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        pytest.param("a=1,b!=2", {"a": "1"}, True, id="and-with-absent"),
        pytest.param("a in (1, 2)", {"a": "2"}, True, id="in-spaces"),
        pytest.param("a notin (1)", {}, True, id="notin-absent"),
        pytest.param("!a", {"a": ""}, False, id="not-exists-empty-value"),
        pytest.param("", {}, True, id="empty"),
    ],
)
def test_label_selector_table(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert parse_label_selector(selector)({"metadata": {"labels": labels}}) is matches


@pytest.mark.parametrize("bad", ["a in b", "a=(", "=x", "a==b==c"])
def test_bad_label_selectors_name_the_term(bad: str) -> None:
    with pytest.raises(KubeError) as caught:
        parse_label_selector(bad)
    assert caught.value.code == 400


def test_field_selector_on_pods() -> None:
    matcher = parse_field_selector("spec.nodeName=n1,metadata.namespace==x", "Pod")
    assert matcher({"metadata": {"namespace": "x"}, "spec": {"nodeName": "n1"}})
    assert not matcher({"metadata": {"namespace": "y"}, "spec": {"nodeName": "n1"}})


def test_merge_and_json_patch() -> None:
    doc = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    assert merge_patch(doc, {"a": {"b": None, "d": 3}, "l": [3]}) == {
        "a": {"c": 2, "d": 3},
        "l": [3],
    }
    ops = [
        {"op": "add", "path": "/l/-", "value": 3},
        {"op": "remove", "path": "/a/b"},
        {"op": "replace", "path": "/a/c", "value": 9},
        {"op": "test", "path": "/l/0", "value": 1},
    ]
    assert json_patch(doc, ops) == {"a": {"c": 9}, "l": [1, 2, 3]}
    assert doc == {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    with pytest.raises(KubeError):
        json_patch(doc, [{"op": "remove", "path": "/nope"}])


def test_apply_tracks_fields_per_manager() -> None:
    first = apply(
        None,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c"},
            "data": {"x": "1", "y": "2"},
        },
        manager="m",
        now="t1",
    )
    assert first["metadata"]["managedFields"][0]["fieldsV1"] == {"f:data": {"f:x": {}, "f:y": {}}}
    second = apply(
        first,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1"}},
        manager="m",
        now="t2",
    )
    assert second["data"] == {"x": "1"}
    assert second["metadata"]["managedFields"][0]["time"] == "t2"
    same = apply(
        second,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1"}},
        manager="m",
        now="t3",
    )
    assert same == second


def test_apply_without_labels_it_applied_before_keeps_the_name() -> None:
    """Dropping the only metadata fields a manager owned removes those fields, not metadata."""
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}}
    labelled = apply(
        None,
        {**obj, "metadata": {**obj["metadata"], "labels": {"a": "1"}}, "data": {"x": "1"}},
        manager="m",
        now="t1",
    )
    again = apply(labelled, {**obj, "data": {"x": "1"}}, manager="m", now="t2")
    assert again["metadata"]["name"] == "c"
    assert again["metadata"]["namespace"] == "n"
    assert not again["metadata"].get("labels")
    assert again["data"] == {"x": "1"}
