from __future__ import annotations

from certs import Role
from meshcore.client import MeshClient
from meshcore.localetcd import LocalEtcd
from meshcore.model import Kind
from tests.conftest import MeshApiFactory, Pki


async def test_smoke(pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory) -> None:
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
        assert res.keys
        batches = []
        async for b in c.watch([Kind.SERVICE, Kind.SYNCED]):
            batches.append(b)
            if b.synced:
                break
        print(batches)
