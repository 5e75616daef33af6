"""Probes of a meshapi's address below gRPC: is it reachable, and did its TLS handshake refuse us?

gRPC reports a client certificate that the server refused as `UNAVAILABLE: Socket closed`, the
same words as a dead server. `diagnose_refusal` finds the cause: it makes one TLS handshake with
the same files, then reads; a server that accepts the handshake and then closes the connection
without a byte (gRPC's server sends its HTTP/2 settings at once) has refused the certificate.
`tcp_reachable` is the cheap probe that cuts a reconnect backoff short when a peer comes back.
Both are bounded by a short timeout and never raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

from certs import CertError, identity_from_certificate, verify_chain

PROBE_TIMEOUT = 1.0


def split_address(address: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` -> (host, port); None for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or "/" in host:
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)


async def tcp_reachable(address: str, *, timeout: float = 0.2) -> bool:
    """True when a TCP connection to `address` is accepted within `timeout`."""
    parts = split_address(address)
    if parts is None:
        return False
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(*parts)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _context(tls_dir: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(tls_dir / "ca.crt"))
    ctx.load_cert_chain(str(tls_dir / "tls.crt"), str(tls_dir / "tls.key"))
    ctx.check_hostname = False  # gRPC checks the name; the probe asks only about certificates
    ctx.set_alpn_protocols(["h2"])
    return ctx


def describe_own_certificate(tls_dir: Path) -> str:
    """Who this client is, and what is wrong with its certificate as far as it can tell alone."""
    cert_path, bundle = tls_dir / "tls.crt", tls_dir / "ca.crt"
    try:
        identity = identity_from_certificate(cert_path.read_bytes())
        who = f"{identity.role} of cell {identity.cell}"
    except (OSError, CertError) as e:
        who = f"{cert_path} ({e})"
    try:
        verify_chain(leaf=cert_path, bundle=bundle)
    except CertError as e:
        return f"the certificate of {who} ({cert_path}) fails this client's own check: {e}"
    return (
        f"the certificate of {who} ({cert_path}) is valid for this client's own trust bundle, "
        "so the peer does not trust the CA that signed it (its trust bundle lacks this mesh's "
        "CA, e.g. after a CA rotation), or it was issued for a role that may not connect "
        "(no client authentication)"
    )


async def diagnose_refusal(
    address: str, tls_dir: Path, *, server_name: str | None = None, timeout: float = PROBE_TIMEOUT
) -> str | None:
    """Why the TLS handshake with `address` fails, or None when it does not (or no TCP)."""
    parts = split_address(address)
    if parts is None:
        return None
    try:
        ctx = _context(tls_dir)
    except (OSError, ssl.SSLError):
        return None  # unreadable files are reported by the client itself
    host, port = parts
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=ctx, server_hostname=server_name or host
                )
            except ssl.SSLCertVerificationError as e:
                return (
                    f"the certificate of meshapi at {address} is not trusted: "
                    f"{e.verify_message}; it is not signed by a CA in {tls_dir / 'ca.crt'}"
                )
            except ssl.SSLError as e:
                return (
                    f"meshapi at {address} refused the TLS handshake ({e.reason}); "
                    + describe_own_certificate(tls_dir)
                )
            try:
                data = await reader.read(1)
            except (ssl.SSLError, ConnectionError):
                data = b""
    except (OSError, TimeoutError):
        return None  # not reachable, or the server accepted us and is just quiet
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                async with asyncio.timeout(timeout):
                    await writer.wait_closed()
    if data:
        return None
    return (
        f"meshapi at {address} refused this client's certificate in the TLS handshake; "
        + describe_own_certificate(tls_dir)
    )
