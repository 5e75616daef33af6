"""The gRPC client of a cell's meshapi, used by nodeagent, meshctl and tests.

Library errors are translated here, at the edge, into the types of `meshcore.errors` that say
what to do next: `PeerUnavailable` (retry), `ResumeUnavailable` (relist), `AccessDenied` (fix the
certificate or connect the cell), `CertificateRefused` (the TLS handshake refused a certificate;
the message says which and why it may be), `RequestRejected` (fix the input), `PeerProtocolError`
(the peer speaks garbage). Every error carries its `ErrorClass` (what an agent reports in
/status), decided here once and never re-parsed from the message. The error types are re-exported
here for the client's callers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from meshcore import wire
from meshcore.errors import (
    LOST_CLASSES,
    AccessDenied,
    CertificateRefused,
    ErrorClass,
    MeshApiError,
    PeerProtocolError,
    PeerUnavailable,
    RequestRejected,
    ResumeUnavailable,
)
from meshcore.handshake import diagnose_refusal, tcp_reachable
from meshcore.model import (
    CellConfig,
    Kind,
    Record,
    RecordError,
    cell_key,
    decode_record,
    encode_record,
)
from meshcore.tls import secure_channel
from meshcore.wire import pb

__all__ = [
    "LOST_CLASSES",
    "AccessDenied",
    "CellInfo",
    "CertificateRefused",
    "ErrorClass",
    "ManifestResult",
    "MeshApiError",
    "MeshClient",
    "PeerProtocolError",
    "PeerUnavailable",
    "RequestRejected",
    "ResumeUnavailable",
    "translate",
]


# How grpc-core words a failure of the connection itself; a status the server sent has the
# server's own words first (meshapi's: "store unavailable: ...", which may quote etcd's
# connection errors further on, so only the start of the details counts).
_TRANSPORT_PREFIXES = (
    "failed to connect",
    "socket closed",
    "connection",
    "broken pipe",
    "transport",
    "goaway",
    "keepalive",
    "endpoint read failed",
    "recvmsg",
    "sendmsg",
    "stream removed",
    "cancelling all calls",  # the server is shutting down
)


def _class_of(code: grpc.StatusCode, details: str) -> ErrorClass:
    text = details.lower().strip()
    if code == grpc.StatusCode.UNAVAILABLE and text.startswith((*_TRANSPORT_PREFIXES, "dns")):
        if "dns" in text or "resolution" in text or "name or service not known" in text:
            return ErrorClass.DNS
        if any(w in text for w in ("ssl", "tls", "handshake", "certificate")):
            return ErrorClass.TLS
        return ErrorClass.TCP
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return ErrorClass.TCP
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED):
        return ErrorClass.PROTOCOL
    return ErrorClass.SERVER


def translate(e: grpc.aio.AioRpcError, *, target: str) -> MeshApiError:
    code = e.code()
    details = e.details() or code.name
    msg = f"{target}: {code.name}: {details}"
    err: MeshApiError
    if code == grpc.StatusCode.OUT_OF_RANGE:
        err = ResumeUnavailable(msg)
    elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        err = AccessDenied(msg)
    elif code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        err = RequestRejected(msg)
    else:
        err = PeerUnavailable(msg)
        err.error_class = _class_of(code, details)
    err.code = code.name
    return err


@dataclass(frozen=True)
class CellInfo:
    config: CellConfig
    revision: int
    epoch: str


@dataclass(frozen=True)
class ManifestResult:
    keys: tuple[str, ...]
    warnings: tuple[str, ...]
    revision: int


class MeshClient:
    """One mTLS channel to one meshapi."""

    def __init__(self, address: str, tls_dir: Path, *, server_name: str | None = None) -> None:
        self.address = address
        self._tls_dir = tls_dir
        self._server_name = server_name
        self._open()

    def _open(self) -> None:
        self._channel = secure_channel(self.address, self._tls_dir, server_name=self._server_name)
        ch = self._channel
        self._watch = ch.unary_stream(
            wire.WATCH, pb.WatchRequest.SerializeToString, pb.WatchBatch.FromString
        )
        self._get_cell = ch.unary_unary(
            wire.GET_CELL, pb.GetCellRequest.SerializeToString, pb.GetCellResponse.FromString
        )
        self._write = ch.unary_unary(
            wire.WRITE, pb.WriteRequest.SerializeToString, pb.WriteResponse.FromString
        )
        self._apply = ch.unary_unary(
            wire.APPLY_MANIFEST,
            pb.ManifestRequest.SerializeToString,
            pb.ManifestResponse.FromString,
        )
        self._delete = ch.unary_unary(
            wire.DELETE_MANIFEST,
            pb.ManifestRequest.SerializeToString,
            pb.ManifestResponse.FromString,
        )
        self._list = ch.unary_unary(
            wire.LIST, pb.ListRequest.SerializeToString, pb.ListResponse.FromString
        )

    async def close(self) -> None:
        await self._channel.close()

    async def reachable(self, *, timeout: float = 0.2) -> bool:
        """A cheap probe: does the meshapi's address accept a TCP connection now?"""
        return await tcp_reachable(self.address, timeout=timeout)

    async def _fresh_if_failed(self) -> None:
        """A channel in TRANSIENT_FAILURE waits out its own reconnect backoff (up to 2 s) before
        it tries again, and fails every call until then; a new channel connects at once."""
        if self._channel.get_state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            old = self._channel
            self._open()
            await old.close()

    async def _translate(self, e: grpc.aio.AioRpcError) -> MeshApiError:
        """`translate`, plus a TLS probe when the failure may be a refused certificate."""
        err = translate(e, target=self.address)
        if isinstance(err, PeerUnavailable) and err.error_class in (ErrorClass.TCP, ErrorClass.TLS):
            reason = await diagnose_refusal(
                self.address, self._tls_dir, server_name=self._server_name
            )
            if reason is not None:
                refused = CertificateRefused(f"{self.address}: {reason}")
                refused.code = err.code
                return refused
        return err

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get_cell(self, *, timeout: float = 5.0) -> CellInfo:
        await self._fresh_if_failed()
        try:
            resp = await self._get_cell(pb.GetCellRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise await self._translate(e) from e
        try:
            config = decode_record(_cell_key_from(resp.config), resp.config)
        except (RecordError, ValueError) as e:
            raise PeerProtocolError(f"{self.address}: bad cell config: {e}") from e
        if not isinstance(config, CellConfig):
            raise PeerProtocolError(f"{self.address}: cell config has the wrong kind")
        return CellInfo(config, resp.revision, resp.epoch)

    async def watch(
        self, kinds: Iterable[Kind] = (), *, resume_revision: int = 0, resume_epoch: str = ""
    ) -> AsyncIterator[pb.WatchBatch]:
        request = pb.WatchRequest(
            kinds=[str(k) for k in kinds],
            resume_revision=resume_revision,
            resume_epoch=resume_epoch,
        )
        await self._fresh_if_failed()
        call = self._watch(request)
        try:
            async for batch in call:
                yield batch
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.INTERNAL and "deserializ" in (e.details() or ""):
                raise PeerProtocolError(f"{self.address}: {e.details()}") from e
            raise await self._translate(e) from e
        except DecodeError as e:
            raise PeerProtocolError(f"{self.address}: undecodable watch batch: {e}") from e
        finally:
            call.cancel()

    async def write(
        self, *, puts: Sequence[Record] = (), deletes: Sequence[str] = (), timeout: float = 10.0
    ) -> int:
        return await self.write_raw(
            puts=[(r.key(), encode_record(r)) for r in puts], deletes=deletes, timeout=timeout
        )

    async def write_raw(
        self,
        *,
        puts: Sequence[tuple[str, bytes]] = (),
        deletes: Sequence[str] = (),
        timeout: float = 10.0,
    ) -> int:
        """Write pre-encoded values (tests use it to send what a broken client would)."""
        request = pb.WriteRequest(
            puts=[pb.Put(key=k, value=v) for k, v in puts], deletes=list(deletes)
        )
        try:
            resp = await self._write(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise await self._translate(e) from e
        return resp.revision

    async def apply_manifest(self, text: str, *, source: str) -> ManifestResult:
        return await self._manifest(self._apply, text, source)

    async def delete_manifest(self, text: str, *, source: str) -> ManifestResult:
        return await self._manifest(self._delete, text, source)

    async def _manifest(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Any, pb.ManifestResponse],
        text: str,
        source: str,
    ) -> ManifestResult:
        try:
            resp = await method(pb.ManifestRequest(manifest=text, source=source), timeout=10.0)
        except grpc.aio.AioRpcError as e:
            raise await self._translate(e) from e
        return ManifestResult(tuple(resp.keys), tuple(resp.warnings), resp.revision)

    async def list(
        self, kinds: Iterable[Kind] = (), *, timeout: float = 10.0
    ) -> tuple[list[tuple[str, Record]], int]:
        try:
            resp = await self._list(pb.ListRequest(kinds=[str(k) for k in kinds]), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise await self._translate(e) from e
        out: list[tuple[str, Record]] = []
        for ev in resp.records:
            try:
                out.append((ev.key, decode_record(ev.key, ev.value)))
            except RecordError as e:
                raise PeerProtocolError(f"{self.address}: {e}") from e
        return out, resp.revision

    async def recovery(self, *, timeout: float = 10.0) -> dict[str, Any]:
        """The cell's store-wipe recovery state (admin): lost records and how to restore them,
        withheld canaries (see meshapi.resync); {} from a meshapi that does not report it."""
        try:
            resp = await self._list(pb.ListRequest(kinds=[str(Kind.CELL)]), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise await self._translate(e) from e
        if not resp.recovery:
            return {}
        try:
            doc = json.loads(resp.recovery)
        except ValueError as e:
            raise PeerProtocolError(f"{self.address}: recovery state is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise PeerProtocolError(f"{self.address}: recovery state is not a JSON object")
        return doc


def _cell_key_from(config_json: bytes) -> str:
    """The key a cell config must have, read from its own name (validated by decode_record)."""
    try:
        name = json.loads(config_json)["name"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError("cell config is not a JSON object with a name") from e
    if not isinstance(name, str):
        raise ValueError("cell config name is not a string")
    return cell_key(name)
