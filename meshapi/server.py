"""gRPC services of a cell's meshapi: `MeshApi` (watch, cell config) and `MeshAdmin` (writes).

Every call starts by turning the client certificate into a `MeshIdentity` and asking the
`CellPolicy`. Inputs are validated here before anything reaches etcd: kinds, revisions, every
record against its key and this cell, manifests. Errors map to statuses that say what is wrong.
The watch stream sends bytes serialized once per (view, kinds) by the cache.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, TypeVar

import grpc
import structlog

from certs import CertError, MeshIdentity, identity_from_certificate
from meshapi.authz import CellPolicy, Denied
from meshapi.cache import WatchCache, WatcherTooSlow
from meshapi.etcd_adapter import StoreRejected, StoreUnavailable
from meshapi.recovery import StoreRecovery
from meshapi.views import Item
from meshapi.writer import RecordWriter
from meshcore import wire
from meshcore.errors import ResumeUnavailable
from meshcore.model import (
    Kind,
    ManifestError,
    Record,
    RecordError,
    cell_key,
    decode_record,
    encode_record,
    kind_of_key,
    load_manifests,
    service_from_manifest,
    service_key,
    service_ref_from_manifest,
)
from meshcore.model.manifest import document_kind, load_documents
from meshcore.model.names import cut
from meshcore.wire import pb

log = structlog.get_logger("meshapi.server")

MAX_WRITE_OPS = 10_000
T = TypeVar("T")


class Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


# Every failure a handler turns into a status (see MeshApiService._status_of).
_FAILURES = (
    Abort,
    Denied,
    RecordError,
    ManifestError,
    ResumeUnavailable,
    WatcherTooSlow,
    StoreUnavailable,
    StoreRejected,
    TimeoutError,
)


def _caller(context: grpc.aio.ServicerContext[Any, Any]) -> MeshIdentity:
    auth = context.auth_context()
    pems = list(auth.get("x509_pem_cert") or [])
    if not pems:
        raise Abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
    try:
        return identity_from_certificate(pems[0])
    except CertError as e:
        raise Abort(grpc.StatusCode.UNAUTHENTICATED, f"client certificate: {e}") from e


def _kinds(names: Any) -> frozenset[Kind]:
    try:
        kinds = frozenset(Kind(n) for n in names)
    except ValueError as e:
        raise Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"unknown kind in {list(names)}; known: {', '.join(k.value for k in Kind)}",
        ) from e
    return kinds or frozenset(Kind)


class MeshApiService:
    """The handlers; `generic_handlers()` registers them on a grpc.aio server."""

    def __init__(
        self,
        *,
        cache: WatchCache,
        writer: RecordWriter,
        policy: CellPolicy,
        recovery: StoreRecovery | None = None,
        source_kinds: frozenset[Kind] = frozenset(),
    ) -> None:
        self.cache = cache
        self.writer = writer
        self.policy = policy
        self.recovery = recovery
        # Kinds a Kubernetes source owns: a write of them by anyone else (an admin, an agent
        # still registering) would fight the source, so it is refused with what to do instead.
        self.source_kinds = source_kinds
        self.requests: Counter[tuple[str, str]] = Counter()
        self.watchers: Counter[str] = Counter()
        self.denied: Counter[str] = Counter()

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(fn: Any, req: Any, resp: Any) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )

        api = grpc.method_handlers_generic_handler(
            "cellmesh.v1.MeshApi",
            {
                # response_serializer None: the handler yields bytes serialized by the cache.
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self.watch, request_deserializer=pb.WatchRequest.FromString
                ),
                "GetCell": unary(self.get_cell, pb.GetCellRequest, pb.GetCellResponse),
            },
        )
        admin = grpc.method_handlers_generic_handler(
            "cellmesh.v1.MeshAdmin",
            {
                "Write": unary(self.write, pb.WriteRequest, pb.WriteResponse),
                "ApplyManifest": unary(
                    self.apply_manifest, pb.ManifestRequest, pb.ManifestResponse
                ),
                "DeleteManifest": unary(
                    self.delete_manifest, pb.ManifestRequest, pb.ManifestResponse
                ),
                "List": unary(self.list, pb.ListRequest, pb.ListResponse),
            },
        )
        return [api, admin]

    async def _guard(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], body: Awaitable[T]
    ) -> T:
        code = grpc.StatusCode.OK
        try:
            return await body
        except _FAILURES as e:
            code, details = self._status_of(method, e)
            await context.abort(code, details)
        finally:
            self.requests[(method, code.name)] += 1
        raise AssertionError("unreachable")  # context.abort always raises

    def _status_of(self, method: str, e: Exception) -> tuple[grpc.StatusCode, str]:
        """The one mapping from an error to the status a client acts on."""
        if isinstance(e, Abort):
            return e.code, e.details
        if isinstance(e, Denied):
            self.denied[method] += 1
            return grpc.StatusCode.PERMISSION_DENIED, str(e)
        if isinstance(e, RecordError | ManifestError):
            return grpc.StatusCode.INVALID_ARGUMENT, str(e)
        if isinstance(e, ResumeUnavailable):
            return grpc.StatusCode.OUT_OF_RANGE, f"{wire.RESUME_UNAVAILABLE}: {e}"
        if isinstance(e, WatcherTooSlow):
            return grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)
        if isinstance(e, StoreRejected):  # permanent: the same write fails again
            return grpc.StatusCode.INVALID_ARGUMENT, str(e)
        return grpc.StatusCode.UNAVAILABLE, f"store unavailable: {e or 'timed out'}"

    # ---- MeshApi ------------------------------------------------------------------------

    async def watch(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        code = grpc.StatusCode.OK
        try:
            who = _caller(context)
            view = self.policy.watch_view(who, self._authz_records())
            kinds = _kinds(request.kinds)
            if request.resume_revision < 0:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "resume_revision must be >= 0")
            self.watchers[view] += 1
            try:
                async for data in self.cache.stream(
                    view=view,
                    kinds=kinds,
                    resume_revision=request.resume_revision,
                    resume_epoch=request.resume_epoch,
                ):
                    yield data
            finally:
                self.watchers[view] -= 1
        except _FAILURES as e:
            code, details = self._status_of("Watch", e)
            await context.abort(code, details)
        finally:
            self.requests[("Watch", code.name)] += 1

    async def get_cell(
        self, request: pb.GetCellRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetCellResponse:
        async def body() -> pb.GetCellResponse:
            self.policy.watch_view(_caller(context), self._authz_records())
            key = cell_key(self.policy.cell)
            item = self.cache.full.get(key)
            # Right after a store wipe the cell config is being written again: answer with it.
            config = item.value if item is not None else self.writer.owned(key)
            if config is None:
                raise Abort(grpc.StatusCode.UNAVAILABLE, "cell config not written yet")
            return pb.GetCellResponse(
                config=config, revision=self.cache.revision, epoch=self.cache.epoch
            )

        return await self._guard("GetCell", context, body())

    # ---- MeshAdmin ----------------------------------------------------------------------

    async def write(
        self, request: pb.WriteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.WriteResponse:
        async def body() -> pb.WriteResponse:
            who = _caller(context)
            if len(request.puts) + len(request.deletes) > MAX_WRITE_OPS:
                raise Abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"more than {MAX_WRITE_OPS} ops in one write"
                )
            for key in [p.key for p in request.puts] + list(request.deletes):
                self._refuse_source_kind(kind_of_key(key))  # from admins and agents alike
            puts: list[tuple[str, bytes]] = []
            for put in request.puts:
                record = decode_record(put.key, put.value)
                self._check_own_cell(put.key, record)
                self.policy.check_write(who, put.key, record, self.cache.full.get(put.key))
                puts.append((put.key, encode_record(record)))
            for key in request.deletes:
                kind_of_key(key)
                self.policy.check_write(who, key, None, self.cache.full.get(key))
            revision = await self.writer.write(puts=puts, deletes=list(request.deletes))
            await self.cache.wait_revision(revision)
            return pb.WriteResponse(revision=revision)

        return await self._guard("Write", context, body())

    def _refuse_source_kind(self, kind: Kind) -> None:
        if kind not in self.source_kinds:
            return
        instead = {
            Kind.SERVICE: "create, annotate or delete the Service in the cluster "
            "(service.cilium.io/global etc.)",
            Kind.ENDPOINT: "scale or change the Service's pods (their EndpointSlices)",
            Kind.NODE: "nodes come from the cluster's Node objects",
            Kind.PEER: "use `meshctl connect --kube-context CTX --destination-kube-context CTX2` "
            "(it writes the cellmesh-peers ConfigMap)",
        }[kind]
        raise Abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"cell {self.policy.cell!r} is fed by Kubernetes: its {kind} come from the cluster's "
            f"API and cannot be written here; {instead}",
        )

    def _check_own_cell(self, key: str, record: Record) -> None:
        cell = getattr(record, "cell", None)
        if cell != self.policy.cell:
            raise RecordError(key, f"record of cell {cell!r} written to cell {self.policy.cell!r}")

    async def apply_manifest(
        self, request: pb.ManifestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ManifestResponse:
        async def body() -> pb.ManifestResponse:
            self.policy.check_admin(_caller(context))
            self._refuse_source_kind(Kind.SERVICE)
            source = cut(request.source or "<manifest>")  # echoed in every message: cut
            puts: list[tuple[str, bytes]] = []
            warnings: list[str] = []
            for number, _, doc in load_documents(request.manifest, source=source):
                if doc.get("kind") != "Service":
                    warnings.append(f"{source}: skipped document {number} ({document_kind(doc)})")
                    continue
                svc = service_from_manifest(doc, cell=self.policy.cell, source=source)
                warnings.extend(f"{svc.namespace}/{svc.name}: {w}" for w in svc.warnings)
                puts.append((svc.key(), encode_record(svc)))
            revision = await self.writer.write(puts=puts)
            await self.cache.wait_revision(revision)
            keys = [k for k, _ in puts]
            log.info("Manifest applied", source=source, services=len(keys))
            return pb.ManifestResponse(keys=keys, warnings=warnings, revision=revision)

        return await self._guard("ApplyManifest", context, body())

    async def delete_manifest(
        self, request: pb.ManifestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ManifestResponse:
        async def body() -> pb.ManifestResponse:
            self.policy.check_admin(_caller(context))
            self._refuse_source_kind(Kind.SERVICE)
            source = cut(request.source or "<manifest>")
            keys = [
                service_key(self.policy.cell, *service_ref_from_manifest(doc, source=source))
                for doc in load_manifests(request.manifest, source=source)
                if doc.get("kind") == "Service"
            ]
            revision = await self.writer.write(deletes=keys)
            await self.cache.wait_revision(revision)
            return pb.ManifestResponse(keys=keys, revision=revision)

        return await self._guard("DeleteManifest", context, body())

    async def list(
        self, request: pb.ListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListResponse:
        async def body() -> pb.ListResponse:
            who = _caller(context)
            view = self.policy.watch_view(who, self._authz_records())
            kinds = _kinds(request.kinds)
            items = self.cache.views[view].items
            return pb.ListResponse(
                records=[
                    pb.Event(key=k, value=it.value, mod_revision=it.mod_revision)
                    for k, it in sorted(items.items())
                    if it.kind in kinds
                ],
                revision=self.cache.revision,
                recovery=json.dumps(self.recovery.status()) if self.recovery else "",
            )

        return await self._guard("List", context, body())

    def _authz_records(self) -> Mapping[str, Item]:
        """The records authorization reads: after a wipe, also the peers lost with the store
        while they are remembered (a wipe is not a revocation; see meshapi.recovery)."""
        if self.recovery is None:
            return self.cache.full
        return self.recovery.authorization_records()
