"""One error hierarchy end to end (`meshcore.errors`): meshapi raises the class its clients get.

The resume refusal is made by meshapi's watch cache, crosses gRPC as a distinct status and comes
back out of `MeshClient.watch` -- as one and the same class, typed permanent (relist instead of
retrying the same resume). Real etcd, real meshapi, real mTLS.
"""

from __future__ import annotations

import pytest

from certs import Role
from meshapi.views import ViewName
from meshcore import client, errors
from meshcore.errors import ErrorClass, MeshApiError, Permanent, ResumeUnavailable, Retriable
from meshcore.localetcd import LocalEtcd
from meshcore.model import Kind
from tests.conftest import MeshApiFactory, Pki

ERRORS: list[type[MeshApiError]] = [
    errors.PeerUnavailable,
    errors.ResumeUnavailable,
    errors.AccessDenied,
    errors.CertificateRefused,
    errors.RequestRejected,
    errors.PeerProtocolError,
]


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_api_error_is_either_retriable_or_permanent(cls: type[MeshApiError]) -> None:
    assert issubclass(cls, MeshApiError)
    assert issubclass(cls, Retriable) != issubclass(cls, Permanent)
    assert isinstance(cls.error_class, ErrorClass)


def test_only_an_unreachable_peer_is_worth_the_same_request_again() -> None:
    retriable: list[type[MeshApiError]] = [c for c in ERRORS if issubclass(c, Retriable)]
    assert retriable == [errors.PeerUnavailable]


def test_the_client_reexports_the_shared_classes() -> None:
    assert client.ResumeUnavailable is ResumeUnavailable
    assert client.ErrorClass is ErrorClass
    assert client.MeshApiError is MeshApiError


async def test_the_cache_refuses_a_resume_with_the_class_the_client_receives(
    pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory
) -> None:
    app = await meshapi_factory("alpha", etcd)
    kinds = frozenset({Kind.ENDPOINT})
    with pytest.raises(ResumeUnavailable) as server_side:
        async for _ in app.cache.stream(
            view=ViewName.FULL, kinds=kinds, resume_revision=1, resume_epoch="another-store"
        ):
            pass
    address = f"127.0.0.1:{app.grpc_port}"
    async with client.MeshClient(address, pki.tls("alpha", Role.AGENT)) as agent:
        with pytest.raises(ResumeUnavailable) as client_side:
            async for _ in agent.watch(kinds, resume_revision=1, resume_epoch="another-store"):
                pass
    assert type(server_side.value) is type(client_side.value) is ResumeUnavailable
    assert isinstance(server_side.value, Permanent)
    assert client_side.value.error_class is ErrorClass.RESUME
    assert "another-store" in str(client_side.value)
