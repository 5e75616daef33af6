from __future__ import annotations

import asyncio

from certs import Role
from meshcore.client import MeshClient
from meshcore.localetcd import LocalEtcd
from meshcore.model import Kind
from tests.conftest import MeshApiFactory, Pki


async def test_manifest_applied_is_listed_with_its_canary(
    pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory
) -> None:
    app = await meshapi_factory("alpha", etcd)
    async with MeshClient(f"127.0.0.1:{app.grpc_port}", pki.tls("alpha", Role.ADMIN)) as c:
        info = await c.get_cell()
        assert info.config.name == "alpha"
        res = await c.apply_manifest(
            """
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: demo
  annotations: {service.cilium.io/global: "true"}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}]
""",
            source="svc.yaml",
        )
        assert res.keys == ("cellmesh/v1/services/alpha/demo/echo",)
        keys: list[str] = []
        async for b in c.watch([Kind.SERVICE, Kind.SYNCED]):
            keys.extend(ev.key for ev in b.events)
            if b.synced:
                break
        assert "cellmesh/v1/services/alpha/demo/echo" in keys
        assert "cellmesh/v1/synced/alpha/services" in keys


async def test_standard_grpc_health_service(
    pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from meshcore.tls import secure_channel

    app = await meshapi_factory("alpha", etcd)
    channel = secure_channel(f"127.0.0.1:{app.grpc_port}", pki.tls("alpha", Role.AGENT))
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        statuses: list[int] = []

        async def check() -> None:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            statuses.append(resp.status)

        serving = health_pb2.HealthCheckResponse.SERVING
        await check()
        while statuses[-1] != serving and len(statuses) < 100:
            await asyncio.sleep(0.05)  # the status follows the cache's readiness
            await check()
        assert statuses[-1] == serving
    finally:
        await channel.close()
