"""meshapi --source kubernetes against the Kubernetes API double (real kubernetes_asyncio over
HTTP on 127.0.0.1) and a real etcd: objects in the API become records in etcd, with canaries,
relists after 410 Gone, bookmarks, malformed objects skipped, and the API going away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from certs import Role
from meshapi.app import MeshApiApp, MeshApiConfig
from meshapi.etcd_adapter import EtcdStore
from meshapi.kubeobjects import node_record, peers_configmap
from meshapi.kubesource import KubeSource
from meshapi.kubestate import WatchKind
from meshcore.client import MeshClient, RequestRejected
from meshcore.localetcd import LocalEtcd
from meshcore.model import (
    CellConfig,
    Endpoint,
    Kind,
    Node,
    Peer,
    Service,
    encode_record,
    endpoint_key,
    node_key,
    peer_key,
    service_key,
    synced_key,
)
from meshctl.lab.kubeapi import KubeApiDouble
from tests.conftest import CELL_CIDRS, CELL_IDS, Pki, wait_for
from tests.meshapi.kube_objects import endpoint_slice as slice_object

CELL = "alpha"
POD, NODES = CELL_CIDRS[CELL]
CONFIG = CellConfig(
    name=CELL, id=CELL_IDS[CELL], pod_cidrs=[ip_network(POD)], node_cidrs=[ip_network(NODES)]
)
SOURCE_KINDS = (Kind.SERVICE, Kind.ENDPOINT, Kind.NODE, Kind.PEER)


def namespace(name: str, *, global_: bool = False) -> dict[str, Any]:
    annotations = {"clustermesh.cilium.io/global": "true"} if global_ else {}
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "annotations": annotations},
    }


def service(name: str = "echo", vip: str = "10.96.0.10", **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "demo", "annotations": annotations},
        "spec": {"clusterIP": vip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }


def endpoint_slice(
    name: str, addresses: list[str], *, service: str = "echo", port: int = 8080, **conditions: bool
) -> dict[str, Any]:
    return slice_object(
        name,
        [{"addresses": [a], "nodeName": "n1", "conditions": dict(conditions)} for a in addresses],
        [{"name": "http", "port": port, "protocol": "TCP"}],
        service=service,
    )


def node(name: str, address: str, pod_cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]},
    }


def svc_key(name: str = "echo") -> str:
    return service_key(CELL, "demo", name)


def ep_key(address: str, name: str = "echo") -> str:
    return endpoint_key(CELL, "demo", name, address)


class KubeCell:
    """The API double, a real etcd and an in-process meshapi fed by the double."""

    def __init__(self, api: KubeApiDouble, etcd: LocalEtcd, kubeconfig: Path, pki: Pki) -> None:
        self.api, self.etcd, self.kubeconfig, self.pki = api, etcd, kubeconfig, pki
        self.app: MeshApiApp | None = None

    async def start(self) -> MeshApiApp:
        self.app = MeshApiApp(
            MeshApiConfig(
                cell=CELL,
                cell_id=CONFIG.id,
                pod_cidrs=tuple(CONFIG.pod_cidrs),
                node_cidrs=tuple(CONFIG.node_cidrs),
                etcd_endpoints=(self.etcd.endpoint,),
                listen="127.0.0.1:0",
                tls_dir=self.pki.tls(CELL, Role.MESHAPI),
                http="127.0.0.1:0",
                heartbeat_interval=0.5,
                source="kubernetes",
                kubeconfig=self.kubeconfig,
                kube_namespace="cellmesh",
                kube_watch_timeout=5,
                kube_retry_delays=(0.05, 0.1, 0.2),
            )
        )
        await self.app.start()
        return self.app

    @property
    def records(self) -> dict[str, Any]:
        assert self.app is not None
        return {k: item.record for k, item in self.app.cache.full.items()}

    def revision_of(self, key: str) -> int:
        assert self.app is not None
        return self.app.cache.full[key].mod_revision

    async def synced(self) -> None:
        """Every source kind's canary is in etcd (so its initial listing is too)."""
        await self.until(
            lambda: all(synced_key(CELL, k) in self.records for k in SOURCE_KINDS), "canaries"
        )

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        await wait_for(condition, timeout=10.0, what=what)

    async def status(self) -> dict[str, Any]:
        _, text = await self.http_get("/status")
        return dict(json.loads(text))

    async def http_get(self, path: str) -> tuple[int, str]:
        assert self.app is not None
        url = f"http://127.0.0.1:{self.app.http_port}{path}"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            return resp.status, await resp.text()

    @property
    def source(self) -> KubeSource:
        assert self.app is not None
        assert self.app.source is not None
        return self.app.source


@pytest.fixture
async def cell(pki: Pki, etcd: LocalEtcd, tmp_path: Path) -> AsyncIterator[KubeCell]:
    api = KubeApiDouble(bookmark_interval=0.2)
    await api.start()
    kube = KubeCell(api, etcd, api.write_kubeconfig(tmp_path / "kubeconfig"), pki)
    try:
        yield kube
    finally:
        if kube.app is not None:
            await kube.app.stop()
        await api.stop()


def seed(api: KubeApiDouble) -> None:
    for name in ("demo", "cellmesh"):
        api.put(namespace(name))
    api.put(service())
    api.put(endpoint_slice("echo-a", ["10.1.1.5", "10.1.1.6"]))
    api.put(node("n1", "192.168.1.11", "10.1.1.0/24"))


async def test_adds_updates_and_deletes_land_in_etcd(cell: KubeCell) -> None:
    seed(cell.api)
    await cell.start()
    await cell.synced()
    rec = cell.records
    svc = rec[svc_key()]
    assert isinstance(svc, Service)
    assert not svc.global_
    assert str(svc.frontends[0].vip) == "10.96.0.10"
    assert {k for k in rec if k.startswith(f"cellmesh/v1/endpoints/{CELL}/")} == {
        ep_key("10.1.1.5"),
        ep_key("10.1.1.6"),
    }
    n1 = rec[node_key(CELL, "n1")]
    assert isinstance(n1, Node)
    assert [str(c) for c in n1.pod_cidrs] == ["10.1.1.0/24"]

    # Namespace annotation -> its services global by default; the service's own annotation wins.
    cell.api.put(namespace("demo", global_=True))
    await cell.until(lambda: cell.records[svc_key()].global_, "service global via namespace")
    cell.api.put(service(**{"service.cilium.io/global": "false"}))
    await cell.until(lambda: not cell.records[svc_key()].global_, "own annotation wins")
    cell.api.put(service(**{"io.cilium/global-service": "true"}))
    await cell.until(lambda: cell.records[svc_key()].global_, "legacy annotation")

    # EndpointSlices: a second and third slice merge into the one backend set.
    cell.api.put(endpoint_slice("echo-b", ["10.1.2.5", "10.1.1.5"], port=9090))
    cell.api.put(endpoint_slice("echo-c", ["10.1.3.5"], ready=False))
    await cell.until(lambda: ep_key("10.1.3.5") in cell.records, "third slice")
    await cell.until(lambda: len(cell.records[ep_key("10.1.1.5")].ports) == 2, "port union")
    merged = cell.records[ep_key("10.1.1.5")]
    assert isinstance(merged, Endpoint)
    assert sorted(p.port for p in merged.ports) == [8080, 9090]
    assert cell.records[ep_key("10.1.3.5")].ready is False
    untouched = cell.revision_of(ep_key("10.1.1.6"))
    cell.api.put(endpoint_slice("echo-c", ["10.1.3.5"], ready=True))
    await cell.until(lambda: cell.records[ep_key("10.1.3.5")].ready, "condition update")
    assert cell.revision_of(ep_key("10.1.1.6")) == untouched  # unchanged records not rewritten
    cell.api.delete("discovery.k8s.io/v1", "EndpointSlice", "echo-b", "demo")
    await cell.until(lambda: ep_key("10.1.2.5") not in cell.records, "slice delete")
    await cell.until(lambda: len(cell.records[ep_key("10.1.1.5")].ports) == 1, "ports shrink")

    # Nodes: update and delete.
    cell.api.put(node("n2", "192.168.1.12", "10.1.2.0/24"))
    await cell.until(lambda: node_key(CELL, "n2") in cell.records, "node add")
    cell.api.put(node("n2", "192.168.1.13", "10.1.2.0/24"))
    await cell.until(
        lambda: [str(a) for a in cell.records[node_key(CELL, "n2")].addresses] == ["192.168.1.13"],
        "node update",
    )
    cell.api.delete("v1", "Node", "n2")
    await cell.until(lambda: node_key(CELL, "n2") not in cell.records, "node delete")

    # Service delete; the peering ConfigMap -> Peer records.
    cell.api.delete("v1", "Service", "echo", "demo")
    await cell.until(lambda: svc_key() not in cell.records, "service delete")
    peers = [Peer(cell=CELL, name="beta", id=2, address="127.0.0.1:7443", export=False)]
    cell.api.put(peers_configmap("cellmesh", CELL, peers))
    await cell.until(lambda: peer_key(CELL, "beta") in cell.records, "peer record")
    assert cell.records[peer_key(CELL, "beta")] == peers[0]
    cell.api.put(peers_configmap("cellmesh", CELL, []))
    await cell.until(lambda: peer_key(CELL, "beta") not in cell.records, "peer removed")


async def test_canaries_follow_the_initial_listing(cell: KubeCell) -> None:
    seed(cell.api)
    # etcd already holds: a service the cluster no longer has, and n1 exactly as it is now.
    stale = Service.model_validate(
        {"cell": CELL, "namespace": "demo", "name": "gone", "frontends": [], "global": False,
         "shared": False, "affinity": "none"}
    )  # fmt: skip
    n1 = node_record(node("n1", "192.168.1.11", "10.1.1.0/24"), config=CONFIG)
    store = EtcdStore([cell.etcd.endpoint])
    await store.connect()
    try:
        before = await store.write(
            puts=[(stale.key(), encode_record(stale)), (n1.key(), encode_record(n1))]
        )
        app = await cell.start()
        await cell.until(
            lambda: all(synced_key(CELL, k) in cell.records for k in SOURCE_KINDS), "canaries"
        )
        for kind, expected in (
            (Kind.SERVICE, {svc_key()}),
            (Kind.ENDPOINT, {ep_key("10.1.1.5"), ep_key("10.1.1.6")}),
            (Kind.NODE, {n1.key()}),
        ):
            canary = cell.revision_of(synced_key(CELL, kind))
            at_canary, _ = await store.list_prefix(f"cellmesh/v1/{kind}/{CELL}/", revision=canary)
            assert {kv.key for kv in at_canary} == expected, kind
        assert cell.revision_of(n1.key()) == before  # identical record: not rewritten
        assert stale.key() not in cell.records
    finally:
        await store.close()
    assert app.source is not None
    assert app.source.synced
    status, _ = await cell.http_get("/readyz")
    assert status == 200
    doc = (await cell.status())["source"]
    assert doc["type"] == "kubernetes"
    assert doc["kinds"]["services"]["synced"]
    assert doc["kinds"]["services"]["objects"] == 1
    assert doc["kinds"]["configmaps"]["objects"] == 0


async def test_gone_relists_and_sweeps_exactly_the_deleted(cell: KubeCell) -> None:
    seed(cell.api)
    cell.api.put(service("other", vip="10.96.0.11"))
    cell.api.put(node("n2", "192.168.1.12", "10.1.2.0/24"))
    app = await cell.start()
    await cell.synced()
    assert app.source is not None
    kept = {k: cell.revision_of(k) for k in (svc_key(), ep_key("10.1.1.5"), node_key(CELL, "n1"))}
    relists = {k: v["relists"] for k, v in app.source.status()["kinds"].items()}
    # No await between these: the open streams end before they could carry the deletes, and
    # the versions they resume from are compacted away -> 410 -> relist.
    cell.api.break_watches()
    cell.api.delete("v1", "Service", "other", "demo")
    cell.api.delete("v1", "Node", "n2")
    cell.api.put(endpoint_slice("echo-a", ["10.1.1.5"]))
    cell.api.compact()
    await cell.until(
        lambda: (
            svc_key("other") not in cell.records
            and node_key(CELL, "n2") not in cell.records
            and ep_key("10.1.1.6") not in cell.records
        ),
        "deleted objects swept",
    )
    status = app.source.status()["kinds"]
    for kind in ("services", "nodes", "endpointslices"):
        assert status[kind]["relists"] > relists[kind], kind
    assert {k: cell.revision_of(k) for k in kept} == kept  # the rest untouched


async def test_bookmarks_advance_the_resume_version(cell: KubeCell) -> None:
    seed(cell.api)
    app = await cell.start()
    await cell.synced()
    assert app.source is not None
    watches = app.source.watches
    before = int(watches["nodes"].resource_version)
    bookmarks = watches["nodes"].bookmarks
    cell.api.put(service("other", vip="10.96.0.11"))  # a change no node watch carries
    target = cell.api.resource_version
    assert target > before
    await cell.until(
        lambda: int(watches["nodes"].resource_version) >= target, "node watch version advanced"
    )
    assert watches["nodes"].bookmarks > bookmarks
    assert app.source.state.objects(WatchKind.NODES) == 1
    doc = (await cell.status())["source"]["kinds"]["nodes"]
    assert int(doc["resource_version"]) >= target
    assert doc["bookmarks"] > bookmarks


async def test_malformed_objects_are_skipped_and_counted(cell: KubeCell) -> None:
    seed(cell.api)
    app = await cell.start()
    await cell.synced()
    # Valid for Kubernetes, not for this cell: an address outside its CIDRs, a pod CIDR outside
    # its pod CIDRs, an SCTP port on a service that had a good record.
    cell.api.put(endpoint_slice("bad-slice", ["10.9.0.5"]))
    cell.api.put(node("bad-node", "192.168.1.20", "10.9.1.0/24"))
    sctp = service()
    sctp["spec"]["ports"][0]["protocol"] = "SCTP"
    cell.api.put(sctp)
    cell.api.put(endpoint_slice("good-slice", ["10.1.4.5"]))
    await cell.until(lambda: ep_key("10.1.4.5") in cell.records, "good objects flow")

    async def bad() -> list[dict[str, Any]]:
        return list((await cell.status())["source"]["bad_objects"])

    await cell.until(lambda: app.source is not None and len(app.source.state.bad) == 3, "3 bad")
    names = {(b["kind"], b["object"]) for b in await bad()}
    assert names == {
        ("endpointslices", "demo/bad-slice"),
        ("nodes", "bad-node"),
        ("services", "demo/echo"),
    }
    assert any("10.9.0.5" in b["error"] for b in await bad())
    assert svc_key() in cell.records  # the last good record stays
    _, metrics = await cell.http_get("/metrics")
    assert 'meshapi_source_bad_objects_total{kind="endpointslices"} 1.0' in metrics
    assert 'meshapi_source_bad_objects_total{kind="nodes"} 1.0' in metrics
    # Fixed or deleted: no longer named.
    cell.api.put(endpoint_slice("bad-slice", ["10.1.5.5"]))
    cell.api.delete("v1", "Node", "bad-node")
    await cell.until(lambda: ep_key("10.1.5.5") in cell.records, "fixed slice lands")
    await cell.until(lambda: len(cell.source.state.bad) == 1, "fixed ones unnamed")


async def test_records_stay_while_the_api_is_away(cell: KubeCell) -> None:
    seed(cell.api)
    app = await cell.start()
    await cell.synced()
    assert app.source is not None
    before = dict(cell.records)
    await cell.api.stop()
    await cell.until(
        lambda: cell.source.watches[WatchKind.SERVICES].last_error is not None, "API gone"
    )
    cell.api.put(endpoint_slice("echo-a", ["10.1.1.5", "10.1.1.7"]))
    cell.api.delete("v1", "Node", "n1")
    assert all(k in cell.records for k in before if "/heartbeat/" not in k)
    await cell.api.start()
    await cell.until(lambda: ep_key("10.1.1.7") in cell.records, "change made meanwhile")
    await cell.until(lambda: node_key(CELL, "n1") not in cell.records, "delete made meanwhile")
    assert ep_key("10.1.1.6") not in cell.records


async def test_writes_of_source_kinds_are_refused(cell: KubeCell, pki: Pki) -> None:
    seed(cell.api)
    app = await cell.start()
    await cell.synced()
    client = MeshClient(f"127.0.0.1:{app.grpc_port}", pki.tls(CELL, Role.ADMIN))
    try:
        manifest = json.dumps(service("x", vip="10.96.0.12"))
        with pytest.raises(RequestRejected, match=r"fed by Kubernetes.*annotate") as e:
            await client.apply_manifest(manifest, source="x.yaml")
        assert e.value.code == "FAILED_PRECONDITION"
        with pytest.raises(RequestRejected, match="meshctl connect --kube-context"):
            await client.write(puts=[Peer(cell=CELL, name="beta", id=2, address="h:1")])
        with pytest.raises(RequestRejected, match="fed by Kubernetes"):
            await client.write_raw(deletes=[node_key(CELL, "n1")])
        with pytest.raises(RequestRejected, match="fed by Kubernetes"):
            await client.delete_manifest(manifest, source="x.yaml")
    finally:
        await client.close()
    assert node_key(CELL, "n1") in cell.records
    # An agent still registering as in standalone mode is refused too (its node's records
    # come from the cluster); the endpoint it tried does not appear.
    pod = Endpoint(
        cell=CELL, namespace="demo", service="echo", address="10.1.1.9", node="n1",
        ports=[{"name": "http", "port": 8080}],
    )  # fmt: skip
    async with MeshClient(
        f"127.0.0.1:{app.grpc_port}", pki.tls(CELL, Role.AGENT, node="n1")
    ) as agent:
        with pytest.raises(RequestRejected, match="fed by Kubernetes") as e:
            await agent.write(puts=[pod])
        assert e.value.code == "FAILED_PRECONDITION"
    assert pod.key() not in cell.records


async def test_not_ready_until_the_source_listed(cell: KubeCell) -> None:
    seed(cell.api)
    await cell.api.stop()
    app = await cell.start()
    assert app.source is not None
    await cell.until(lambda: synced_key(CELL, Kind.CELL) in cell.records, "own canaries")
    await cell.until(lambda: cell.source.watches[WatchKind.NODES].last_error is not None, "gone")
    status, text = await cell.http_get("/readyz")
    assert status == 503
    assert "Kubernetes source not synced" in text
    assert not any(synced_key(CELL, k) in cell.records for k in SOURCE_KINDS)
    assert (await cell.status())["source"]["kinds"]["nodes"]["synced"] is False
    await cell.api.start()
    await cell.synced()
    status, _ = await cell.http_get("/readyz")
    assert status == 200


async def test_etcd_wipe_writes_the_desired_state_again(cell: KubeCell) -> None:
    seed(cell.api)
    # The peering lives in the cluster (the ConfigMap), so it survives the wipe too.
    peer = Peer(cell=CELL, name="beta", id=2, address="127.0.0.1:7443")
    cell.api.put(peers_configmap("cellmesh", CELL, [peer]))
    app = await cell.start()
    await cell.synced()
    expected = {
        svc_key(), ep_key("10.1.1.5"), ep_key("10.1.1.6"), node_key(CELL, "n1"),
        peer_key(CELL, "beta"),
    }  # fmt: skip
    assert expected <= cell.records.keys()
    epoch = app.cache.epoch
    await asyncio.to_thread(cell.etcd.wipe)
    await asyncio.to_thread(cell.etcd.start)
    await cell.until(lambda: app.cache.epoch != epoch, "the wipe noticed")
    await cell.synced()  # the source re-marked its kinds at once: nothing withheld for them
    assert expected <= cell.records.keys()
    assert cell.records[peer_key(CELL, "beta")] == peer
    assert app.recovery.core.lost() == []
    assert not app.recovery.core.withheld & {Kind.SERVICE, Kind.ENDPOINT, Kind.NODE, Kind.PEER}


async def test_a_watch_event_larger_than_the_read_buffer_lands(cell: KubeCell) -> None:
    """A 1,000-endpoint slice is one watch line of ~100 KiB, larger than aiohttp's read buffer."""
    seed(cell.api)
    await cell.start()
    await cell.synced()
    addresses = [f"10.1.{i // 250 + 10}.{i % 250 + 1}" for i in range(1000)]
    big = endpoint_slice("echo-big", addresses)
    assert len(json.dumps(big)) > 64 * 1024
    cell.api.put(big)
    await cell.until(
        lambda: all(ep_key(a) in cell.records for a in (addresses[0], addresses[-1])),
        "the large slice's endpoints",
    )
    assert cell.source.watches[WatchKind.ENDPOINTSLICES].last_error is None
