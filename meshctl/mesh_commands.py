"""``meshctl apply -f``, ``delete -f`` and ``services``: talk to the selected cell's meshapi.

Flow: the global ``--config``/``--context`` options (``cli``) -> ``ContextSelection.resolve`` ->
``MeshClient`` (mTLS gRPC) -> the meshapi admin API (``ApplyManifest``, ``DeleteManifest``,
``List``) -> one line per service on stdout, warnings on stderr as ``warning: ...``. Each command
runs its own event loop (``asyncio.run``). ``services --kube-context CTX`` reads the cell found
from its meshapi Service instead (``meshctl.kube.access``); same output. Files are checked before
anything is sent: YAML that parses (aliases bounded), at least one Service document, no unknown
annotation value (apply). Every failure -- a refused file, a context problem, a TLS directory that
does not load, a ``MeshApiError`` -- becomes a one-line ``click.ClickException`` (exit 1) carrying
the file's or the server's message; never a traceback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import click

from meshcore.client import (
    AccessDenied,
    CertificateRefused,
    ManifestResult,
    MeshApiError,
    MeshClient,
    PeerProtocolError,
    PeerUnavailable,
    RequestRejected,
)
from meshcore.lbpolicy import frontend_label
from meshcore.model import Endpoint, Kind, ManifestError, RecordError, Service, parse_key
from meshcore.model.manifest import check_annotation_values, document_kind, load_documents
from meshcore.tls import TlsConfigError
from meshctl.contexts import Context, ContextError, ContextSelection
from meshctl.kube.options import kube_cell, kube_options
from meshctl.output import format_table, output_option

__all__ = [
    "apply_command",
    "delete_command",
    "describe_mesh_error",
    "services_command",
]


def describe_mesh_error(e: MeshApiError, ctx: Context) -> str:
    """A one-line message for a meshapi failure: who refused, and the server's own words."""
    address = ctx.server
    text = str(e)
    # The client formats errors as "<address>: <CODE>: <details>"; keep only the details.
    for prefix in (f"{address}: {e.code}: ", f"{address}: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    if isinstance(e, CertificateRefused):
        where = f"{address} (context {ctx.name!r})"
        return f"certificate refused in the TLS handshake with {where}: {text}"
    if isinstance(e, AccessDenied):
        return f"access denied by {address}: {text}"
    if isinstance(e, RequestRejected):
        return f"rejected by {address}: {text}"
    if isinstance(e, PeerUnavailable):
        return f"cannot reach meshapi at {address} (context {ctx.name!r}): {text}"
    if isinstance(e, PeerProtocolError):
        return f"unexpected answer from {address}: {text}"
    return f"{address}: {text}"


@contextmanager
def _reported_errors(ctx: Context | None = None) -> Iterator[None]:
    """Turn context and meshapi errors into one-line click errors (exit 1)."""
    try:
        yield
    except ContextError as e:
        raise click.ClickException(str(e)) from e
    except TlsConfigError as e:
        name = ctx.name if ctx is not None else "?"
        raise click.ClickException(f"context {name!r}: cannot load TLS files: {e}") from e
    except MeshApiError as e:
        if ctx is None:  # pragma: no cover - a client exists only once a context is resolved
            raise click.ClickException(str(e)) from e
        raise click.ClickException(describe_mesh_error(e, ctx)) from e


def _selected_context(selection: ContextSelection) -> Context:
    with _reported_errors():
        return selection.resolve()


def _client(ctx: Context) -> MeshClient:
    return MeshClient(ctx.server, ctx.tls_dir, server_name=ctx.server_name)


def _shown_key(key: str) -> str:
    """``service/<ns>/<name>`` for a service key; other keys as they are."""
    try:
        parts = parse_key(key)
    except RecordError:
        return key
    if parts.kind is Kind.SERVICE:
        return "service/" + "/".join(parts.rest)
    return key


def _read(file: TextIO) -> tuple[str, str]:
    """The file's name (``<stdin>`` for ``-``) and its text."""
    source = str(getattr(file, "name", "-"))
    try:
        return source, file.read()
    except (OSError, UnicodeDecodeError) as e:
        raise click.ClickException(f"cannot read {source}: {e}") from e


def _report(result: ManifestResult, source: str, verb: str) -> None:
    for key in result.keys:
        click.echo(f"{_shown_key(key)} {verb}")
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not result.keys:
        click.echo(f"warning: {source}: no Service documents", err=True)


def _check_manifest(source: str, text: str, *, delete: bool) -> None:
    """Refuse, before anything is sent, a file that would change nothing or not what it says.

    Its YAML must parse (aliases bounded), it must hold at least one Service document, and
    (apply) every annotation value must be a known one: the server would take the default.
    """
    verb = "delete" if delete else "apply"
    try:
        docs = load_documents(text, source=source)
        services = [d for d in docs if d.body.get("kind") == "Service"]
        if not docs:
            raise ManifestError(source, "", f"no documents: nothing to {verb}")
        if not services:
            found = ", ".join(f"document {d.number} {document_kind(d.body)}" for d in docs[:5])
            more = f" and {len(docs) - 5} more" if len(docs) > 5 else ""
            raise ManifestError(
                source, "", f"no Service documents (found {found}{more}): nothing to {verb}"
            )
        if not delete:
            for doc in services:
                check_annotation_values(doc, source=source)
    except ManifestError as e:
        raise click.ClickException(str(e)) from e


async def _send_manifests(ctx: Context, files: Sequence[TextIO], *, delete: bool) -> None:
    sources = [_read(file) for file in files]
    for source, text in sources:  # every file checked before the first is sent
        _check_manifest(source, text, delete=delete)
    async with _client(ctx) as client:
        for source, text in sources:
            if delete:
                _report(await client.delete_manifest(text, source=source), source, "deleted")
            else:
                _report(await client.apply_manifest(text, source=source), source, "applied")


_FILES_OPTION = click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    type=click.File("r", encoding="utf-8"),
    help="YAML file of v1 Service manifests ('-' reads stdin); repeatable.",
)


@click.command("apply")
@_FILES_OPTION
@click.pass_obj
def apply_command(selection: ContextSelection, files: tuple[TextIO, ...]) -> None:
    """Create or update the cell's services from Kubernetes Service manifests."""
    ctx = _selected_context(selection)
    with _reported_errors(ctx):
        asyncio.run(_send_manifests(ctx, files, delete=False))


@click.command("delete")
@_FILES_OPTION
@click.pass_obj
def delete_command(selection: ContextSelection, files: tuple[TextIO, ...]) -> None:
    """Delete the cell's services named by Kubernetes Service manifests."""
    ctx = _selected_context(selection)
    with _reported_errors(ctx):
        asyncio.run(_send_manifests(ctx, files, delete=True))


# ---- services ----------------------------------------------------------------------------


ServiceRow = tuple[Service, list[Endpoint]]


async def _fetch_services(ctx: Context) -> list[ServiceRow]:
    """The cell's services, sorted by namespace/name, each with its endpoints sorted by address."""
    async with _client(ctx) as client:
        records, _revision = await client.list([Kind.SERVICE, Kind.ENDPOINT])
    services: dict[tuple[str, str], Service] = {}
    endpoints: dict[tuple[str, str], list[Endpoint]] = {}
    for _key, record in records:
        if isinstance(record, Service):
            services[record.namespace, record.name] = record
        elif isinstance(record, Endpoint):
            endpoints.setdefault((record.namespace, record.service), []).append(record)
    return [
        (
            services[ref],
            sorted(endpoints.get(ref, []), key=lambda ep: (ep.address.version, ep.address)),
        )
        for ref in sorted(services)
    ]


def _service_json(service: Service, endpoints: list[Endpoint]) -> dict[str, Any]:
    return {
        "cell": service.cell,
        "namespace": service.namespace,
        "name": service.name,
        "global": service.global_,
        "shared": service.shared,
        "affinity": service.affinity.value,
        "frontends": [
            {"name": f.name, "vip": str(f.vip), "port": f.port, "protocol": f.protocol}
            for f in service.frontends
        ],
        "warnings": list(service.warnings),
        "endpoints": [
            {
                "address": str(ep.address),
                "node": ep.node,
                "ports": [
                    {"name": p.name, "port": p.port, "protocol": p.protocol} for p in ep.ports
                ],
                "ready": ep.ready,
                "serving": ep.serving,
                "terminating": ep.terminating,
            }
            for ep in endpoints
        ],
    }


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _services_table(rows: list[ServiceRow]) -> str:
    headers = ("NAMESPACE/NAME", "GLOBAL", "SHARED", "AFFINITY", "FRONTENDS", "BACKENDS")
    lines = [
        (
            f"{svc.namespace}/{svc.name}",
            _yes_no(svc.global_),
            _yes_no(svc.shared),
            svc.affinity.value,
            ",".join(frontend_label(f) for f in svc.frontends) or "<none>",
            f"{sum(ep.ready for ep in endpoints)}/{len(endpoints)}",
        )
        for svc, endpoints in rows
    ]
    return format_table(headers, lines)


@click.command("services")
@kube_options
@output_option()
@click.pass_obj
def services_command(
    selection: ContextSelection,
    kube_context: str | None,
    endpoint: str | None,
    kubeconfig: Path | None,
    output: str,
) -> None:
    """List the cell's services with their frontends and backends.

    The cell is the global --context, or a kube context (--kube-context: its meshapi
    Service's LoadBalancer ingress, or --endpoint).
    """
    with _reported_errors():
        kube = kube_cell(
            selection.config_path,
            kube_context=kube_context,
            endpoint=endpoint,
            kubeconfig=kubeconfig,
        )
    ctx = kube or _selected_context(selection)
    with _reported_errors(ctx):
        rows = asyncio.run(_fetch_services(ctx))
    if output == "json":
        click.echo(json.dumps([_service_json(svc, eps) for svc, eps in rows], indent=2))
        return
    if not rows:
        click.echo(f"No services in context {ctx.name!r}.", err=True)
        return
    click.echo(_services_table(rows))
    for svc, _endpoints in rows:
        for warning in svc.warnings:
            click.echo(f"warning: {svc.namespace}/{svc.name}: {warning}", err=True)
