"""A cell's certificates for ``meshctl install``: the CA, the TLS Secrets, meshctl's admin files.

Design: the mesh CA's private key never leaves where it lives. With ``--ca DIR`` it is read
from the operator's machine into this process; with ``--ca-from-context CTX2`` it is read from
CTX2's Secret ``cellmesh-ca`` (``ca.crt``, ``ca.key``) into this process's memory only. Either
way meshctl signs here (``certs.memory``) and sends the new cell only its leaf certificates and
keys (Secrets ``cellmesh-meshapi-tls`` and ``cellmesh-agent-tls``: ``ca.crt``, ``tls.crt``,
``tls.key``), never the CA key. meshctl's own admin certificate for the cell goes to
``<dir of --config>/kube/<context>/admin/`` (``meshctl.kube.access.admin_tls_dir``). Existing
certificates that are still right (cell, role, SANs, this CA, not near expiry:
``certs.reissue_reason``) are kept byte for byte, which makes a second install a no-op.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from certs import (
    BUNDLE_FILE,
    CA_CERT_FILE,
    CA_KEY_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    CertError,
    CertificateAuthority,
    Role,
    load_ca,
)
from certs.memory import PemPair, ca_certificate_pem, ca_from_pem, issue_pem, reissue_reason
from certs.pemfiles import PRIVATE_MODE, PUBLIC_MODE, ensure_directory, write_file
from meshctl.kube.client import KubeClient
from meshctl.kube.render import NAMESPACE, PART_OF_LABEL

__all__ = [
    "AGENT_TLS_SECRET",
    "CA_SECRET",
    "MESHAPI_DNS_NAMES",
    "MESHAPI_TLS_SECRET",
    "CaSource",
    "ensure_admin_tls",
    "load_ca_from_context",
    "load_ca_from_dir",
    "planned_tls_secrets",
    "redacted",
    "remove_admin_tls",
]

MESHAPI_TLS_SECRET: Final = "cellmesh-meshapi-tls"
AGENT_TLS_SECRET: Final = "cellmesh-agent-tls"
CA_SECRET: Final = "cellmesh-ca"
# Every name the agents and peers may dial meshapi by, inside the cluster and from the host.
MESHAPI_DNS_NAMES: Final = (
    "cellmesh-meshapi",
    f"cellmesh-meshapi.{NAMESPACE}",
    f"cellmesh-meshapi.{NAMESPACE}.svc",
    f"cellmesh-meshapi.{NAMESPACE}.svc.cluster.local",
    "localhost",
)
MESHAPI_IP_ADDRESSES: Final = ("127.0.0.1",)
CERT_DAYS: Final = 365
RENEW_DAYS: Final = 30
_KEYS: Final = (BUNDLE_FILE, TLS_CERT_FILE, TLS_KEY_FILE)


class TlsSecretError(Exception):
    """The CA or an existing certificate Secret is unusable; the message names which and why."""


@dataclass(frozen=True)
class CaSource:
    """A loaded mesh CA and where it came from (for messages)."""

    ca: CertificateAuthority
    where: str


def load_ca_from_dir(ca_dir: Path) -> CaSource:
    try:
        return CaSource(load_ca(ca_dir), str(ca_dir))
    except CertError as e:
        raise TlsSecretError(f"--ca {ca_dir}: {e}") from e


def _decoded(secret: dict[str, Any], key: str, *, where: str) -> bytes:
    data = secret.get("data") or {}
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        raise TlsSecretError(f"{where} has no data key {key!r}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise TlsSecretError(f"{where} data key {key!r} is not base64") from e


def load_ca_from_context(client: KubeClient) -> CaSource:
    """The CA from the Secret ``cellmesh-ca`` in ``client``'s cluster, held in memory only."""
    where = f"Secret {NAMESPACE}/{CA_SECRET} in kube context {client.context}"
    secret = client.get("v1", "Secret", CA_SECRET, NAMESPACE)
    if secret is None:
        raise TlsSecretError(
            f"{where} does not exist; the cell that owns the mesh CA keeps it there "
            f"(kubectl -n {NAMESPACE} create secret generic {CA_SECRET} "
            "--from-file=ca.crt --from-file=ca.key)"
        )
    cert = _decoded(secret, CA_CERT_FILE, where=where)
    key = _decoded(secret, CA_KEY_FILE, where=where)
    try:
        return CaSource(ca_from_pem(cert, key, source=where), where)
    except CertError as e:
        raise TlsSecretError(str(e)) from e


def _secret(name: str, component: str, files: dict[str, bytes]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {
                PART_OF_LABEL[0]: PART_OF_LABEL[1],
                "app.kubernetes.io/component": component,
            },
        },
        "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(files[k]).decode("ascii") for k in _KEYS},
    }


def _wanted(role: Role, extra_sans: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """meshapi's SANs: the in-cluster names, loopback, and ``extra_sans`` (names or IPs)."""
    if role is not Role.MESHAPI:
        return (), ()
    ips = [a for a in extra_sans if _is_ip(a)]
    dns = [n.lower() for n in extra_sans if not _is_ip(n)]
    return (
        tuple(dict.fromkeys([*MESHAPI_DNS_NAMES, *dns])),
        tuple(dict.fromkeys([*MESHAPI_IP_ADDRESSES, *ips])),
    )


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _existing_files(secret: dict[str, Any] | None) -> dict[str, bytes] | None:
    if secret is None:
        return None
    try:
        return {k: _decoded(secret, k, where="") for k in _KEYS}
    except TlsSecretError:
        return None  # incomplete or garbled: replaced by a new certificate


def planned_tls_secrets(
    source: CaSource,
    *,
    cell: str,
    existing: Callable[[str], dict[str, Any] | None],
    extra_sans: Sequence[str] = (),
) -> list[tuple[dict[str, Any], str]]:
    """The two TLS Secrets to apply, each with ``kept`` or the reason it was (re)issued.

    ``existing(name)`` returns the Secret in the cluster now (or ``None``); ``extra_sans``
    are more names or addresses peers reach meshapi by (its load balancer's).
    """
    ca_pem = ca_certificate_pem(source.ca)
    result: list[tuple[dict[str, Any], str]] = []
    for name, role, component in (
        (MESHAPI_TLS_SECRET, Role.MESHAPI, "meshapi"),
        (AGENT_TLS_SECRET, Role.AGENT, "nodeagent"),
    ):
        dns, ips = _wanted(role, extra_sans)
        files = _existing_files(existing(name))
        reason = "new" if files is None else None
        if files is not None:
            reason = reissue_reason(
                source.ca,
                cert_pem=files[TLS_CERT_FILE],
                key_pem=files[TLS_KEY_FILE],
                bundle_pem=files[BUNDLE_FILE],
                cell=cell,
                role=role,
                dns_names=dns,
                ip_addresses=ips,
                min_days_left=RENEW_DAYS,
            )
        if files is None or reason is not None:
            pair = _issue(source, cell=cell, role=role, dns=dns, ips=ips)
            files = {BUNDLE_FILE: ca_pem, TLS_CERT_FILE: pair.cert, TLS_KEY_FILE: pair.key}
        result.append((_secret(name, component, files), reason or "kept"))
    return result


def _issue(
    source: CaSource,
    *,
    cell: str,
    role: Role,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> PemPair:
    try:
        return issue_pem(
            source.ca,
            cell=cell,
            role=role,
            dns_names=dns,
            ip_addresses=ips,
            days=CERT_DAYS,
            ca_source=source.where,
        )
    except CertError as e:
        raise TlsSecretError(f"cannot issue the {role.value} certificate of {cell}: {e}") from e


def redacted(secret: dict[str, Any]) -> dict[str, Any]:
    """The Secret for ``--dry-run`` output: same keys, no key material."""
    copy = {k: v for k, v in secret.items() if k != "data"}
    copy["stringData"] = {k: "<redacted: issued by meshctl install>" for k in _KEYS}
    return copy


def ensure_admin_tls(source: CaSource, *, cell: str, out_dir: Path) -> str:
    """meshctl's admin certificate for ``cell`` in ``out_dir``: ``kept`` or why it was issued."""
    paths = {k: out_dir / k for k in _KEYS}
    reason: str | None = "new"
    if all(p.is_file() for p in paths.values()):
        try:
            files = {k: p.read_bytes() for k, p in paths.items()}
        except OSError as e:
            reason = f"unreadable: {e}"
        else:
            reason = reissue_reason(
                source.ca,
                cert_pem=files[TLS_CERT_FILE],
                key_pem=files[TLS_KEY_FILE],
                bundle_pem=files[BUNDLE_FILE],
                cell=cell,
                role=Role.ADMIN,
                min_days_left=RENEW_DAYS,
            )
    if reason is None:
        return "kept"
    pair = _issue(source, cell=cell, role=Role.ADMIN)
    try:
        ensure_directory(out_dir, mode=0o700)
        write_file(paths[TLS_KEY_FILE], pair.key, mode=PRIVATE_MODE, overwrite=True)
        write_file(paths[TLS_CERT_FILE], pair.cert, mode=PUBLIC_MODE, overwrite=True)
        write_file(
            paths[BUNDLE_FILE], ca_certificate_pem(source.ca), mode=PUBLIC_MODE, overwrite=True
        )
    except CertError as e:
        raise TlsSecretError(f"cannot write meshctl's admin certificate: {e}") from e
    return reason


def remove_admin_tls(out_dir: Path) -> bool:
    """Delete the admin certificate files (and the directory once empty); ``True`` if any were."""
    removed = False
    for name in _KEYS:
        try:
            (out_dir / name).unlink()
            removed = True
        except FileNotFoundError:
            continue
        except OSError as e:
            raise TlsSecretError(f"cannot remove {out_dir / name}: {e.strerror}") from e
    with contextlib.suppress(OSError):
        out_dir.rmdir()  # only when empty: files someone else put there stay
    return removed
