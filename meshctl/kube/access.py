"""Admin access to a cell by kube context: its meshapi's address, TLS directory and server name.

Flow: kube context -> ``KubeClient`` -> Service ``cellmesh/cellmesh-meshapi`` ->
``status.loadBalancer.ingress[0]`` (``ip`` or ``hostname``) and the port named ``grpc`` (or the
``--endpoint HOST:PORT`` the operator gave) -> the admin TLS directory ``meshctl install`` wrote
(``<dir of the --config file>/kube/<context>/admin/``) -> the TLS server name: none when the
meshapi certificate covers the address dialed (a load balancer's address usually is not), else
the certificate's own DNS name (``cellmesh-meshapi.cellmesh.svc`` when it has it), read in one
TLS handshake -> a ``KubeCellContext``: a meshctl ``Context`` named after the kube context, so
connect, status, services and explain run unchanged on it. Every failure is a ``KubeAccessError``
(a ``ContextError``) naming the context, the Service and what is missing.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Final

from certs import CertError, describe_certificate
from certs.pemfiles import parse_certificate
from meshctl.contexts import (
    TLS_FILES,
    Context,
    ContextError,
    InvalidContextError,
    check_server,
    check_server_name,
)
from meshctl.kube.client import KubeClient, KubeError

__all__ = [
    "GRPC_PORT_NAME",
    "MESHAPI_NAMESPACE",
    "MESHAPI_SERVER_NAME",
    "MESHAPI_SERVICE",
    "KubeAccessError",
    "KubeCellContext",
    "admin_tls_dir",
    "choose_server_name",
    "installed_kube_contexts",
    "kube_cell_context",
    "meshapi_endpoint",
    "read_server_certificate",
]

MESHAPI_NAMESPACE: Final = "cellmesh"
MESHAPI_SERVICE: Final = "cellmesh-meshapi"
GRPC_PORT_NAME: Final = "grpc"
# The in-cluster name of meshapi (its agents dial it): the DNS name its certificate carries.
MESHAPI_SERVER_NAME: Final = f"{MESHAPI_SERVICE}.{MESHAPI_NAMESPACE}.svc"
HANDSHAKE_TIMEOUT: Final = 5.0


class KubeAccessError(ContextError):
    """A cell's meshapi cannot be located or reached by kube context; the message says why."""


@dataclass(frozen=True)
class KubeCellContext(Context):
    """A ``Context`` resolved from a kube context (its name need not be a DNS label).

    ``source`` says where the address came from, for messages; ``kubeconfig`` is the file the
    context was read from (None: ``$KUBECONFIG`` or ``~/.kube/config``).
    """

    kube_context: str = ""
    source: str = ""
    kubeconfig: Path | None = None

    def __post_init__(self) -> None:
        check_server(self.server)
        if self.server_name is not None:
            check_server_name(self.server_name)


def admin_tls_dir(config_path: Path, kube_context: str) -> Path:
    """Where ``meshctl install --kube-context`` put meshctl's admin certificate for the cell."""
    return config_path.expanduser().parent / "kube" / kube_context / "admin"


def installed_kube_contexts(config_path: Path) -> list[str]:
    """The kube contexts ``meshctl install`` wrote an admin certificate for, sorted."""
    root = config_path.expanduser().parent / "kube"
    if not root.is_dir():
        return []
    return sorted(
        str(found.parent.relative_to(root)) for found in root.rglob("admin") if found.is_dir()
    )


def _service_where(context: str) -> str:
    return f"kube context {context!r}: Service {MESHAPI_NAMESPACE}/{MESHAPI_SERVICE}"


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def meshapi_endpoint(service: dict[str, Any] | None, context: str, endpoint_flag: str) -> str:
    """``HOST:PORT`` of meshapi from its Service: LoadBalancer ingress and the ``grpc`` port."""
    where = _service_where(context)
    if service is None:
        raise KubeAccessError(
            f"{where} not found: is cellmesh installed there ('meshctl install --kube-context "
            f"{context} ...')? Or pass {endpoint_flag} HOST:PORT"
        )
    spec = service.get("spec") or {}
    ports = spec.get("ports") if isinstance(spec, dict) else None
    port = next(
        (
            p.get("port")
            for p in ports or []
            if isinstance(p, dict) and p.get("name") == GRPC_PORT_NAME
        ),
        None,
    )
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise KubeAccessError(
            f"{where} has no port named {GRPC_PORT_NAME!r} (meshapi's gRPC port): re-run "
            f"'meshctl install', or pass {endpoint_flag} HOST:PORT"
        )
    status = service.get("status") or {}
    balancer = status.get("loadBalancer") if isinstance(status, dict) else None
    ingress = balancer.get("ingress") if isinstance(balancer, dict) else None
    first = ingress[0] if isinstance(ingress, list) and ingress else None
    host = (first.get("ip") or first.get("hostname")) if isinstance(first, dict) else None
    if not isinstance(host, str) or not host:
        kind = spec.get("type", "ClusterIP") if isinstance(spec, dict) else "?"
        raise KubeAccessError(
            f"{where} (type {kind}) has no LoadBalancer ingress yet: wait for the load balancer "
            f"to be provisioned, or pass {endpoint_flag} HOST:PORT"
        )
    server = _join(host, port)
    try:
        return check_server(server)
    except InvalidContextError as e:
        raise KubeAccessError(f"{where}: LoadBalancer ingress gives {e}") from None


def read_server_certificate(
    server: str, tls_dir: Path, server_name: str | None, *, timeout: float = HANDSHAKE_TIMEOUT
) -> bytes:
    """The TLS certificate (DER) the server at ``server`` presents to the admin certificate.

    Not verified on purpose: this only reads it (the callers judge it; gRPC verifies for real).
    """
    host, _, port = server.rpartition(":")
    host = host.strip("[]")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    tls.load_cert_chain(tls_dir / "tls.crt", tls_dir / "tls.key")
    tls.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=timeout) as sock,
        tls.wrap_socket(sock, server_hostname=server_name or host) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    if not der:
        raise OSError("the server sent no certificate")
    return der


def _covers(dns_names: tuple[str, ...], ip_addresses: tuple[str, ...], host: str) -> bool:
    try:
        return str(ip_address(host)) in ip_addresses
    except ValueError:
        pass
    host = host.lower()
    return any(
        name.lower() == host
        or (name.startswith("*.") and host.partition(".")[2] == name[2:].lower())
        for name in dns_names
    )


def choose_server_name(der: bytes, host: str) -> str | None:
    """None when the certificate is valid for ``host``; else the name agents must verify.

    ``cellmesh-meshapi.cellmesh.svc`` when the certificate has it, else its first DNS name;
    None when it has no DNS name (the preflight then says the certificate does not fit).
    """
    try:
        info = describe_certificate(parse_certificate(der, source=host), path=Path(host))
    except CertError:
        return None
    if _covers(info.dns_names, info.ip_addresses, host):
        return None
    names = [n for n in info.dns_names if not n.startswith("*.")]
    if MESHAPI_SERVER_NAME in names:
        return MESHAPI_SERVER_NAME
    return names[0] if names else None


def _check_admin_dir(tls_dir: Path, context: str) -> None:
    missing = [name for name in TLS_FILES if not (tls_dir / name).is_file()]
    if missing:
        raise KubeAccessError(
            f"kube context {context!r}: no admin certificate for meshctl in {tls_dir} (missing "
            f"{', '.join(missing)}): 'meshctl install --kube-context {context} ...' writes it "
            "there (with the same --config)"
        )


def kube_cell_context(
    kube_context: str | None,
    *,
    config_path: Path,
    kubeconfig: Path | None = None,
    endpoint: str | None = None,
    endpoint_flag: str = "--endpoint",
) -> KubeCellContext:
    """The cell behind ``kube_context`` (None: the kubeconfig's current one) as a Context.

    ``endpoint`` (``HOST:PORT``) wins over the Service's LoadBalancer ingress; the Service is
    then not read at all (the API server may even be unreachable from here).
    """
    if endpoint is not None:
        try:
            check_server(endpoint)
        except InvalidContextError as e:
            raise InvalidContextError(f"{endpoint_flag}: {e}") from None
    try:
        with KubeClient.from_context(kube_context, kubeconfig=kubeconfig) as client:
            name = client.context
            if endpoint is None:
                service = client.get("v1", "Service", MESHAPI_SERVICE, MESHAPI_NAMESPACE)
                server = meshapi_endpoint(service, name, endpoint_flag)
                source = f"Service {MESHAPI_NAMESPACE}/{MESHAPI_SERVICE} LoadBalancer ingress"
            else:
                server, source = endpoint, endpoint_flag
    except KubeError as e:
        raise KubeAccessError(str(e)) from e
    tls_dir = admin_tls_dir(config_path, name)
    _check_admin_dir(tls_dir, name)
    host = server.rpartition(":")[0].strip("[]")
    try:
        der = read_server_certificate(server, tls_dir, None)
    except (OSError, ssl.SSLError):
        server_name = None  # not reachable now: the command that uses it will say so
    else:
        server_name = choose_server_name(der, host)
    return KubeCellContext(
        name=name,
        server=server,
        tls_dir=tls_dir,
        server_name=server_name,
        kube_context=name,
        source=source,
        kubeconfig=kubeconfig,
    )
