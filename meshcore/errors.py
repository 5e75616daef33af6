"""The errors shared across the parts: one hierarchy for meshapi, its clients and the agent.

Two questions a caller asks of an error are answered by its type, never by its message:

- *May the same request succeed later?* `Retriable` (retry with backoff: the peer is away, slow or
  restarting) or `Permanent` (the same request fails again until something changes: a refused
  certificate or right, an invalid request, a resume revision that is gone -- relist instead,
  garbage from the peer). A long-running watcher retries either kind (peers get fixed); a one-shot
  caller such as meshctl gives up on a `Permanent` one.
- *What kind of failure is it?* `ErrorClass`, the `error_class` an agent reports in /status,
  carried by the error class itself (decided once where the error is made, in `meshcore.client`
  for gRPC statuses).

meshapi raises `ResumeUnavailable` from its watch cache and answers it with a distinct status
(`OUT_OF_RANGE`, `meshcore.wire.RESUME_UNAVAILABLE`); the client turns that status back into the
same class. Pure: no IO library is imported here.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "LOST_CLASSES",
    "AccessDenied",
    "CertificateRefused",
    "ErrorClass",
    "MeshApiError",
    "PeerProtocolError",
    "PeerUnavailable",
    "Permanent",
    "RequestRejected",
    "ResumeUnavailable",
    "Retriable",
]


class ErrorClass(StrEnum):
    """What kind of failure an error is (the `error_class` of an agent's /status)."""

    DNS = "dns"  # the address does not resolve
    TCP = "tcp"  # no connection: refused, reset, timed out
    TLS = "tls"  # the TLS handshake failed: a certificate was refused
    AUTHZ = "authz"  # connected, but the certificate's cell or role may not do this
    CONFIG = "config"  # the cell's config does not fit the mesh (set by the agent)
    PROTOCOL = "protocol"  # the peer sent something that is not our wire format
    SERVER = "server"  # the peer answered but could not serve (e.g. its etcd is down)
    RESUME = "resume"  # the resume point is gone: a relist, not a fault of the connection


LOST_CLASSES = frozenset({ErrorClass.DNS, ErrorClass.TCP})
"""The peer is away (no connection): a probe can tell when it is back."""


class Retriable(Exception):
    """The same request may succeed later: retry it with backoff."""


class Permanent(Exception):
    """The same request fails again until something changes; the message says what."""


class MeshApiError(Exception):
    """Base of the meshapi API errors; `code` is the gRPC status name when there is one."""

    code: str = ""
    error_class: ErrorClass = ErrorClass.PROTOCOL


class PeerUnavailable(MeshApiError, Retriable):
    """Not reachable, too slow, or restarting: retry with backoff."""

    error_class = ErrorClass.TCP


class ResumeUnavailable(MeshApiError, Permanent):
    """The resume revision is gone (compacted, or another store epoch): relist."""

    error_class = ErrorClass.RESUME


class AccessDenied(MeshApiError, Permanent):
    """The certificate was refused or lacks the right: retrying will not help."""

    error_class = ErrorClass.AUTHZ


class CertificateRefused(AccessDenied):
    """The TLS handshake failed on a certificate (ours refused, or the server's untrusted)."""

    error_class = ErrorClass.TLS


class RequestRejected(MeshApiError, Permanent):
    """The server found the request invalid; the message says what and where."""


class PeerProtocolError(MeshApiError, Permanent):
    """The peer sent something that is not our wire format."""
