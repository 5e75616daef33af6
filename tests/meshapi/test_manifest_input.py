"""Hostile manifests through the real admin gRPC API of a real meshapi (issue 11, #9).

A YAML alias bomb is refused at parse time with a short, clear error; every value the server
echoes (document kinds, annotation values, the source name) is cut before it is formatted, so
an answer stays small whatever was sent. Sizes are measured on what the client received.
"""

from __future__ import annotations

import pytest

from certs import Role
from meshapi.app import MeshApiApp
from meshcore.client import ManifestResult, MeshClient, RequestRejected
from meshcore.localetcd import LocalEtcd
from meshcore.model import Kind
from tests.conftest import MeshApiFactory, Pki

# Echoes are cut to a few hundred characters; a whole answer stays within this many bytes.
BOUND = 4096


def alias_bomb(levels: int, *, under: str = "kind") -> str:
    """Billion laughs: 9**levels strings from a few hundred bytes, placed under ``under``."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join([*lines, f"{under}: *l{levels - 1}", "apiVersion: v1", ""])


SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: demo
  annotations:
    service.cilium.io/global: {value}
spec:
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: 80}}]
"""


def size(result: ManifestResult) -> int:
    return sum(len(k) for k in result.keys) + sum(len(w) for w in result.warnings)


@pytest.fixture
async def alpha(etcd: LocalEtcd, meshapi_factory: MeshApiFactory) -> MeshApiApp:
    return await meshapi_factory("alpha", etcd)


async def services(client: MeshClient) -> list[str]:
    records, _ = await client.list([Kind.SERVICE])
    return [key for key, _ in records]


@pytest.mark.parametrize("under", ["kind", "metadata"])
async def test_an_alias_bomb_is_refused_with_a_short_clear_error(
    pki: Pki, alpha: MeshApiApp, under: str
) -> None:
    bomb = alias_bomb(6, under=under)  # 531,441 strings from under 500 bytes
    assert len(bomb) < 500
    async with MeshClient(f"127.0.0.1:{alpha.grpc_port}", pki.tls("alpha", Role.ADMIN)) as admin:
        with pytest.raises(RequestRejected) as info:
            await admin.apply_manifest(bomb, source="bomb.yaml")
        message = str(info.value)
        assert len(message) < BOUND
        assert "bomb.yaml: line 1: document 1: YAML aliases expand it to more than" in message
        assert "alias bomb" in message
        with pytest.raises(RequestRejected, match="refers to its own anchor"):
            await admin.apply_manifest("kind: &k [*k]\n", source="loop.yaml")
        assert await services(admin) == []


async def test_echoed_values_are_cut_before_they_are_formatted(pki: Pki, alpha: MeshApiApp) -> None:
    huge = "x" * 1_000_000
    skipped = f"apiVersion: v1\nkind: [{', '.join(['a' * 50] * 20_000)}]\n"
    async with MeshClient(f"127.0.0.1:{alpha.grpc_port}", pki.tls("alpha", Role.ADMIN)) as admin:
        # A document of another kind: skipped with a warning naming the document, cut.
        result = await admin.apply_manifest(skipped, source=huge)
        assert result.keys == ()
        assert len(result.warnings) == 1
        assert "skipped document 1" in result.warnings[0]
        assert size(result) < BOUND
        # An unknown annotation value: the default, reported, cut.
        result = await admin.apply_manifest(SERVICE.format(value=huge), source="svc.yaml")
        assert len(result.keys) == 1
        assert "service.cilium.io/global: unknown value 'xxx" in result.warnings[0]
        assert size(result) < BOUND
        # An error that names a bad value and the source: cut as well.
        with pytest.raises(RequestRejected) as info:
            await admin.apply_manifest(f"kind: Service\napiVersion: {huge}\n", source=huge)
        assert len(str(info.value)) < BOUND
