"""A certificate refused in the TLS handshake is reported as such, with its likely cause.

gRPC says only `UNAVAILABLE: Socket closed` for a refused client certificate, the words of a dead
server; meshctl must say that the certificate was refused and why it may be. Real meshapi, real
certificates from two CAs, the real CLI.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from certs import Role
from meshcore.localetcd import LocalEtcd
from meshctl.cli import cli
from meshctl.contexts import Context, add_context
from tests.conftest import MeshApiFactory, Pki


async def run(config: Path, *args: str) -> Result:
    env: dict[str, str | None] = {"MESHCTL_CONTEXT": None, "MESHCTL_CONFIG": None}
    argv = ["--config", str(config), *args]
    return await asyncio.to_thread(CliRunner().invoke, cli, argv, env=env)


@pytest.fixture
async def server(etcd: LocalEtcd, meshapi_factory: MeshApiFactory) -> str:
    app = await meshapi_factory("alpha", etcd)
    return f"127.0.0.1:{app.grpc_port}"


def tls_copy(src: Path, dst: Path, *, bundle: bytes) -> Path:
    """A TLS directory with `src`'s certificate and key and `bundle` as its ca.crt."""
    shutil.copytree(src, dst)
    (dst / "ca.crt").write_bytes(bundle)
    return dst


async def refused(config: Path, server: str, name: str, tls_dir: Path) -> str:
    add_context(config, Context(name, server, tls_dir))
    result = await run(config, "--context", name, "services")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr
    assert "cannot reach meshapi" not in result.stderr
    assert "Socket closed" not in result.stderr
    assert (
        f"certificate refused in the TLS handshake with {server} (context {name!r})"
        in result.stderr
    )
    return result.stderr


async def test_expired_certificate(server: str, expired_admin_tls: Path, tmp_path: Path) -> None:
    stderr = await refused(tmp_path / "meshctl.json", server, "expired", expired_admin_tls)
    assert "refused this client's certificate in the TLS handshake" in stderr
    assert "admin of cell alpha" in stderr
    assert "expired at" in stderr


async def test_certificate_of_a_ca_the_server_does_not_trust(
    server: str, pki: Pki, foreign_pki: Pki, tmp_path: Path
) -> None:
    ours = (pki.ca_dir / "ca.crt").read_bytes()
    theirs = (foreign_pki.ca_dir / "ca.crt").read_bytes()
    foreign_admin = foreign_pki.tls("alpha", Role.ADMIN)
    # The client trusts meshapi's CA (and its own): only the server's check can fail.
    both = tls_copy(foreign_admin, tmp_path / "both", bundle=ours + theirs)
    stderr = await refused(tmp_path / "meshctl.json", server, "foreign", both)
    assert "refused this client's certificate in the TLS handshake" in stderr
    assert "the peer does not trust the CA that signed it" in stderr
    # The client's own bundle lacks its issuer: it says so.
    own_only = tls_copy(foreign_admin, tmp_path / "own", bundle=ours)
    stderr = await refused(tmp_path / "meshctl.json", server, "unbundled", own_only)
    assert "which is not in the trust bundle" in stderr


async def test_server_certificate_not_trusted(
    server: str, foreign_pki: Pki, tmp_path: Path
) -> None:
    stderr = await refused(
        tmp_path / "meshctl.json", server, "alien", foreign_pki.tls("alpha", Role.ADMIN)
    )
    assert f"the certificate of meshapi at {server} is not trusted" in stderr
    assert "ca.crt" in stderr
