"""Garbage written straight into etcd is counted and skipped; meshapi keeps serving."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request

from certs import Role
from meshcore.client import MeshClient
from meshcore.localetcd import LocalEtcd
from meshcore.model import Kind, encode_record
from tests.conftest import MeshApiFactory, Pki, wait_for
from tests.meshapi.helpers import endpoint, running_watcher, service


def etcdctl_put(etcd: LocalEtcd, key: str, value: str) -> None:
    subprocess.run(
        ["etcdctl", "--endpoints", etcd.endpoint, "put", key, value],
        check=True,
        capture_output=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    )


def http_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return str(resp.read().decode())


async def test_garbage_in_etcd_is_counted_skipped_and_never_streamed(
    pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory
) -> None:
    app = await meshapi_factory("alpha", etcd)
    addr = f"127.0.0.1:{app.grpc_port}"
    good = endpoint("alpha", 1)
    async with MeshClient(addr, pki.tls("alpha", Role.ADMIN)) as admin:
        await admin.write(puts=[service("alpha"), good])
    async with running_watcher(addr, pki.tls("alpha", Role.AGENT, node="n1")) as rw:
        await asyncio.wait_for(rw.watcher.synced.wait(), 10)
        garbage = {
            "cellmesh/v1/services/alpha/demo/broken": "{not json",
            "cellmesh/v1/endpoints/alpha/demo/echo/10.1.0.9": json.dumps(
                {**json.loads(encode_record(endpoint("alpha", 8))), "cell": "beta"}
            ),
            "cellmesh/v1/nonsense/alpha/x": "{}",
            "cellmesh/v1/nodes/alpha/n1": json.dumps(
                {"cell": "alpha", "name": "n1", "addresses": ["not-an-ip"]}
            ),
            good.key(): "[1, 2, 3]",  # overwrites a good record: the last good value stays
        }
        for key, value in garbage.items():
            await asyncio.to_thread(etcdctl_put, etcd, key, value)
        await wait_for(
            lambda: sum(app.cache.stats.bad_records.values()) >= len(garbage),
            what="bad records counted",
        )
        # Still serving: a valid write afterwards reaches the watcher, the garbage never did.
        later = endpoint("alpha", 2)
        async with MeshClient(addr, pki.tls("alpha", Role.ADMIN)) as admin:
            last = await admin.write(puts=[later])
        await wait_for(lambda: rw.watcher.revision >= last, what="valid write after garbage")
        assert later.key() in rw.watcher.records
        assert rw.watcher.records[good.key()] == good
        for key in garbage:
            if key != good.key():
                assert key not in rw.watcher.records
        assert sum(rw.watcher.stats.bad_records.values()) == 0, "garbage reached a watcher"
        assert app.cache.full[good.key()].record == good

        metrics = await asyncio.to_thread(http_get, app.http_port, "/metrics")
        assert 'meshapi_bad_records_total{kind="services"} 1.0' in metrics
        assert 'meshapi_bad_records_total{kind="unknown"} 1.0' in metrics
        assert 'meshapi_watchers{view="full"} 1.0' in metrics
        assert 'meshapi_requests_total{code="OK",method="Write"}' in metrics
        sent = [ln for ln in metrics.splitlines() if ln.startswith("meshapi_events_sent_total")]
        assert len(sent) == 1
        assert float(sent[0].split()[-1]) >= 3
        status = json.loads(await asyncio.to_thread(http_get, app.http_port, "/status"))
        assert set(status["bad_keys"]) == set(garbage)
        reason = status["bad_keys"]["cellmesh/v1/nodes/alpha/n1"]
        assert reason == "addresses[0]: 'not-an-ip' is not an IPv4 or IPv6 address"
        assert await asyncio.to_thread(http_get, app.http_port, "/readyz") == "ready\n"
        # A full relist by a new watcher skips the garbage too.
        async with running_watcher(
            addr, pki.tls("alpha", Role.AGENT, node="n1"), [Kind.ENDPOINT]
        ) as fresh:
            await asyncio.wait_for(fresh.watcher.synced.wait(), 10)
            assert set(fresh.watcher.records) == {good.key(), later.key()}
