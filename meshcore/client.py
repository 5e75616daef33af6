"""The gRPC client of a cell's meshapi, used by nodeagent, meshctl and tests.

Library errors are translated here, at the edge, into types that say what to do next:
`PeerUnavailable` (retry), `ResumeUnavailable` (relist), `AccessDenied` (fix the certificate or
connect the cell), `RequestRejected` (fix the input), `PeerProtocolError` (the peer speaks garbage).
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


class MeshApiError(Exception):
    """Base of the client errors; `code` is the gRPC status name when there is one."""

    code: str = ""


class PeerUnavailable(MeshApiError):
    """Not reachable, too slow, or restarting: retry with backoff."""


class ResumeUnavailable(MeshApiError):
    """The resume revision is gone: relist."""


class AccessDenied(MeshApiError):
    """The certificate was refused or lacks the right: retrying will not help."""


class RequestRejected(MeshApiError):
    """The server found the request invalid; the message says what and where."""


class PeerProtocolError(MeshApiError):
    """The peer sent something that is not our wire format."""


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
        self._channel = secure_channel(address, tls_dir, server_name=server_name)
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

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get_cell(self, *, timeout: float = 5.0) -> CellInfo:
        try:
            resp = await self._get_cell(pb.GetCellRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise translate(e, target=self.address) from e
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
        call = self._watch(request)
        try:
            async for batch in call:
                yield batch
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.INTERNAL and "deserializ" in (e.details() or ""):
                raise PeerProtocolError(f"{self.address}: {e.details()}") from e
            raise translate(e, target=self.address) from e
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
            raise translate(e, target=self.address) from e
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
            raise translate(e, target=self.address) from e
        return ManifestResult(tuple(resp.keys), tuple(resp.warnings), resp.revision)

    async def list(
        self, kinds: Iterable[Kind] = (), *, timeout: float = 10.0
    ) -> tuple[list[tuple[str, Record]], int]:
        try:
            resp = await self._list(pb.ListRequest(kinds=[str(k) for k in kinds]), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise translate(e, target=self.address) from e
        out: list[tuple[str, Record]] = []
        for ev in resp.records:
            try:
                out.append((ev.key, decode_record(ev.key, ev.value)))
            except RecordError as e:
                raise PeerProtocolError(f"{self.address}: {e}") from e
        return out, resp.revision


def _cell_key_from(config_json: bytes) -> str:
    """The key a cell config must have, read from its own name (validated by decode_record)."""
    try:
        name = json.loads(config_json)["name"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError("cell config is not a JSON object with a name") from e
    if not isinstance(name, str):
        raise ValueError("cell config name is not a string")
    return cell_key(name)
