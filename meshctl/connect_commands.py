"""``meshctl connect`` and ``disconnect``: join two cells with Peer records, after a preflight.

Flow: ``--context A`` and ``--destination-context B`` -> both contexts resolved -> preflight, each
failure one message that names the fix: certificate files valid long enough, each side trusting
the other's CA, both meshapis answering ``GetCell``, both meshapi server certificates (fetched
over TLS with the admin certificate) valid, trusted and matching the address, distinct cell names
and ids, pod and node CIDRs not overlapping -> the desired Peer records compared with the current
ones -> only what differs is written. Re-running writes nothing; ``--dry-run`` stops after the
preflight. ``disconnect`` deletes the same records.

Modes (Cilium's): bidirectional -- each cell's record for the other watches and exports;
unicast A -> B -- A's agents read B and B never reads A: A's record for B has ``export`` off (B's
agents are refused by A), B's record for A has ``watch`` off (a grant: B's meshapi admits A's
agents, B's agents do not watch A).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from ipaddress import ip_address
from pathlib import Path

import click

from certs import CertError, ExpiryStatus, describe_certificate, inspect_certificate, verify_chain
from certs.inspection import CertificateInfo
from certs.pemfiles import parse_certificate
from meshcore.client import MeshApiError, MeshClient
from meshcore.model import ClashKind, Kind, Peer, find_cell_clash, find_peer_id_clash, peer_key
from meshcore.tls import TlsConfigError
from meshctl.contexts import Context, ContextError, ContextSelection, resolve_context
from meshctl.mesh_commands import describe_mesh_error
from meshctl.peering import (
    BIDIRECTIONAL,
    UNICAST,
    Cell,
    describe_peer,
    desired_peers,
    undesired_peers,
)

__all__ = ["connect_command", "disconnect_command"]

WARN_DAYS = 30


class PreflightError(Exception):
    """A check failed; the message says what is wrong and how to fix it."""


# ---- certificates -----------------------------------------------------------------------------


def _check_expiry(info: CertificateInfo, what: str, fix: str, warnings: list[str]) -> None:
    until = info.not_after.strftime("%Y-%m-%d %H:%M UTC")
    if info.status is ExpiryStatus.EXPIRED:
        raise PreflightError(f"{what} expired at {until}: {fix}")
    if info.status is ExpiryStatus.EXPIRING:
        warnings.append(f"{what} expires in {info.days_left} day(s) ({until}): {fix} soon")


def check_local_certificates(a: Context, b: Context, warnings: list[str]) -> None:
    """Each admin certificate valid; each side's certificate issued by a CA the other trusts."""
    for ctx in (a, b):
        fix = f"issue a new admin certificate into {ctx.tls_dir} (meshctl certs issue --role admin)"
        try:
            info = inspect_certificate(ctx.tls_dir / "tls.crt")
        except CertError as e:
            raise PreflightError(f"context {ctx.name!r}: {e}") from e
        _check_expiry(info, f"the admin certificate of context {ctx.name!r}", fix, warnings)
    for mine, theirs in ((a, b), (b, a)):
        try:
            verify_chain(leaf=mine.tls_dir / "tls.crt", bundle=theirs.tls_dir / "ca.crt")
        except CertError as e:
            raise PreflightError(
                f"context {theirs.name!r} does not trust the CA of context {mine.name!r} ({e}): "
                "both cells must share the mesh CA -- issue their certificates from the same CA, "
                f"or add {mine.name!r}'s CA to the trust bundles of {theirs.name!r} "
                "(meshctl ca add-to-bundle) during a rotation"
            ) from e


def fetch_server_certificate(ctx: Context, *, timeout: float = 5.0) -> bytes:
    """The meshapi's TLS certificate (DER), read in a handshake made with the admin certificate.

    Not verified here on purpose: an expired or foreign certificate must be described, not
    refused (``check_server_certificate`` judges it; gRPC verifies for real).
    """
    host, _, port = ctx.server.rpartition(":")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    tls.load_cert_chain(ctx.tls_dir / "tls.crt", ctx.tls_dir / "tls.key")
    tls.set_alpn_protocols(["h2"])
    host = host.strip("[]")
    with (
        socket.create_connection((host, int(port)), timeout=timeout) as sock,
        tls.wrap_socket(sock, server_hostname=ctx.server_name or host) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    if not der:
        raise OSError("the server sent no certificate")
    return der


def _name_matches(info: CertificateInfo, host: str) -> bool:
    try:
        return str(ip_address(host)) in info.ip_addresses
    except ValueError:
        pass
    host = host.lower()
    for name in info.dns_names:
        name = name.lower()
        if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:]):
            return True
    return False


def check_server_certificate(cell: Cell, other: Context, der: bytes, warnings: list[str]) -> None:
    """Valid long enough, trusted by ``other``'s agents, and valid for the address they dial."""
    ctx = cell.ctx
    what = f"the meshapi certificate of cell {cell.name!r} ({ctx.server})"
    fix = f"issue a new one (meshctl certs issue --role meshapi) and restart {cell.name}'s meshapi"
    try:
        cert = parse_certificate(der, source=ctx.server)
        info = describe_certificate(cert, path=Path(ctx.server), warn_days=WARN_DAYS)
        _check_expiry(info, what, fix, warnings)
        verify_chain(leaf=cert, bundle=other.tls_dir / "ca.crt")
    except CertError as e:
        raise PreflightError(
            f"{what} is not trusted by context {other.name!r} ({e}): both cells must share "
            "the mesh CA"
        ) from e
    host = ctx.server_name or ctx.server.rpartition(":")[0].strip("[]")
    if not _name_matches(info, host):
        valid = ", ".join([*info.dns_names, *info.ip_addresses]) or "no names"
        raise PreflightError(
            f"{what} is valid for {valid}, not for {host!r}, which agents of {other.name!r} will "
            f"dial: reissue it with that name (meshctl certs issue --dns/--ip), or set the name "
            f"the certificate has with 'meshctl context add {ctx.name} --server-name NAME ...'"
        )


# ---- cells ------------------------------------------------------------------------------------

_FLAGS = {
    ("pod", "pod"): "--pod-cidr",
    ("node", "node"): "--node-cidr",
    ("pod", "node"): "--pod-cidr or --node-cidr",
    ("node", "pod"): "--pod-cidr or --node-cidr",
}


def check_cells_fit(a: Cell, b: Cell) -> None:
    """Distinct names and ids (also among each side's other peers), CIDRs that do not overlap.

    The rule is the model's (`find_cell_clash`, the one the agents apply); this words the fix.
    """
    ca, cb = a.config, b.config
    clash = find_cell_clash(ca, cb)
    if clash is not None and clash.kind is ClashKind.NAME:
        raise PreflightError(
            f"contexts {a.ctx.name!r} and {b.ctx.name!r} both reach a cell named {ca.name!r} "
            f"({a.ctx.server}, {b.ctx.server}): cell names must be unique in a mesh -- pick the "
            "other cell's context with --destination-context, or rename one cell (meshapi --cell)"
        )
    if clash is not None and clash.kind is ClashKind.ID:
        raise PreflightError(
            f"cells {ca.name!r} and {cb.name!r} both have id {ca.id}: cell ids must be unique in "
            f"a mesh -- restart one cell's meshapi with another --cell-id (1-255)"
        )
    for x, y in ((a, b), (b, a)):
        other = find_peer_id_clash(y.config, x.peers.values())
        if other is not None:
            raise PreflightError(
                f"cell {y.name!r} has id {y.config.id}, already used by {other.name!r}, a "
                f"peer of {x.name!r}: restart {y.name}'s meshapi with another --cell-id"
            )
    if clash is not None:
        raise PreflightError(
            f"{clash.mine_kind} CIDR {clash.mine} of cell {ca.name!r} overlaps "
            f"{clash.theirs_kind} CIDR {clash.theirs} of cell {cb.name!r}: connected cells need "
            "distinct addresses -- give one cell CIDRs that do not overlap (meshapi "
            f"{_FLAGS[clash.mine_kind, clash.theirs_kind]}) before connecting them"
        )


# ---- talking to the meshapis ------------------------------------------------------------------


def _client(ctx: Context) -> MeshClient:
    return MeshClient(ctx.server, ctx.tls_dir, server_name=ctx.server_name)


async def fetch_cell(ctx: Context) -> Cell:
    """The cell's config and Peer records; `PreflightError` naming the fix when unreachable."""
    try:
        async with _client(ctx) as client:
            info = await client.get_cell()
            records, _ = await client.list([Kind.PEER])
    except TlsConfigError as e:
        raise PreflightError(f"context {ctx.name!r}: cannot load TLS files: {e}") from e
    except MeshApiError as e:
        raise PreflightError(
            f"{describe_mesh_error(e, ctx)} -- check that it runs and that the context points "
            f"at it ('meshctl context add {ctx.name} --server HOST:PORT ...')"
        ) from e
    peers = {r.name: r for _, r in records if isinstance(r, Peer)}
    return Cell(ctx, info.config, peers)


async def preflight(a: Context, b: Context, warnings: list[str]) -> tuple[Cell, Cell]:
    check_local_certificates(a, b, warnings)
    cell_a, cell_b = await asyncio.gather(fetch_cell(a), fetch_cell(b))
    for cell, other in ((cell_a, b), (cell_b, a)):
        try:
            der = await asyncio.to_thread(fetch_server_certificate, cell.ctx)
        except (OSError, ssl.SSLError) as e:
            raise PreflightError(
                f"cannot read the meshapi certificate of cell {cell.name!r} at {cell.ctx.server}: "
                f"{e}"
            ) from e
        check_server_certificate(cell, other, der, warnings)
    check_cells_fit(cell_a, cell_b)
    return cell_a, cell_b


async def _write(cell: Cell, *, puts: Sequence[Peer] = (), deletes: Sequence[str] = ()) -> None:
    try:
        async with _client(cell.ctx) as client:
            await client.write(puts=puts, deletes=deletes)
    except MeshApiError as e:
        raise PreflightError(describe_mesh_error(e, cell.ctx)) from e


# ---- the commands -----------------------------------------------------------------------------


@contextmanager
def _reported() -> Iterator[None]:
    try:
        yield
    except ContextError as e:
        raise click.ClickException(str(e)) from e
    except PreflightError as e:
        raise click.ClickException(str(e)) from e


def _contexts(
    selection: ContextSelection, context: str | None, destination: str
) -> tuple[Context, Context]:
    a = resolve_context(selection.config_path, context or selection.context_name)
    b = resolve_context(selection.config_path, destination)
    if a.name == b.name:
        raise click.UsageError(f"--context and --destination-context are both {a.name!r}")
    return a, b


def _options(fn: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            click.option(
                "--context",
                "context_name",
                metavar="NAME",
                help="Context of the source cell [default: the global --context or current].",
            ),
            click.option(
                "--destination-context",
                required=True,
                metavar="NAME",
                help="Context of the cell to connect to.",
            ),
            click.option(
                "--connection-mode",
                type=click.Choice([BIDIRECTIONAL, UNICAST]),
                default=BIDIRECTIONAL,
                show_default=True,
                help="unicast: only the source cell's agents read the destination; the "
                "destination admits them but never reads the source.",
            ),
        ]
    ):
        fn = option(fn)
    return click.pass_obj(fn)


@click.command("connect")
@_options
@click.option("--dry-run", is_flag=True, help="Run the preflight checks only; change nothing.")
def connect_command(
    selection: ContextSelection,
    context_name: str | None,
    destination_context: str,
    connection_mode: str,
    dry_run: bool,
) -> None:
    """Connect two cells: preflight, then a Peer record in each.

    Unicast: the source's record watches the destination; the destination's only admits the
    source's agents (it never reads the source).
    """
    with _reported():
        a, b = _contexts(selection, context_name, destination_context)
        warnings: list[str] = []
        try:
            cell_a, cell_b = asyncio.run(preflight(a, b, warnings))
        finally:
            for warning in warnings:
                click.echo(f"warning: {warning}", err=True)
        click.echo(
            f"Preflight passed: {cell_a.name} (id {cell_a.config.id}) and {cell_b.name} "
            f"(id {cell_b.config.id}) share the CA, their CIDRs do not overlap."
        )
        changes = desired_peers(cell_a, cell_b, connection_mode)
        changes = [(src, p) for src, p in changes if src.peers.get(p.name) != p]
        for src, p in changes:
            verb = "would update" if p.name in src.peers else "would add"
            if not dry_run:
                asyncio.run(_write(src, puts=[p]))
                verb = "updated" if p.name in src.peers else "added"
            click.echo(f"cell {src.name}: peer {p.name} ({p.address}) {verb} ({describe_peer(p)})")
    if not changes:
        click.echo(f"{cell_a.name} and {cell_b.name} are already connected ({connection_mode}).")
    if dry_run:
        click.echo("Dry run: nothing was changed.")
    elif changes:
        click.echo(f"Connected {cell_a.name} and {cell_b.name} ({connection_mode}).")


@click.command("disconnect")
@_options
def disconnect_command(
    selection: ContextSelection,
    context_name: str | None,
    destination_context: str,
    connection_mode: str,
) -> None:
    """Disconnect two cells: delete their Peer records (agents drain the peer at once).

    Unicast removes the source's watch of the destination and the destination's grant to the
    source; a record that still carries the other direction stays with that direction only.

    When the destination's meshapi is down, the source's Peer record whose address is the
    destination context's server is still removed; its own record waits for a re-run.
    """
    with _reported():
        a, b = _contexts(selection, context_name, destination_context)
        cell_a, cell_b, unreachable = asyncio.run(_fetch_for_disconnect(a, b))
        if cell_b is None:
            assert unreachable is not None
            gone = [p.name for p in cell_a.peers.values() if p.address == b.server]
            if not gone:
                raise unreachable
            for name in gone:
                asyncio.run(_write(cell_a, deletes=[peer_key(cell_a.name, name)]))
                click.echo(f"cell {cell_a.name}: peer {name} removed")
            # Both modes leave a record in the destination (unicast: its grant to this cell).
            raise PreflightError(
                f"{unreachable}; the Peer record for {cell_a.name} in the cell behind context "
                f"{b.name!r} stays: run 'meshctl disconnect' again once it is reachable"
            )
        removed = 0
        for src, name, keep in undesired_peers(cell_a, cell_b, connection_mode):
            if keep is None:
                asyncio.run(_write(src, deletes=[peer_key(src.name, name)]))
                click.echo(f"cell {src.name}: peer {name} removed")
            else:
                asyncio.run(_write(src, puts=[keep]))
                click.echo(f"cell {src.name}: peer {name} kept ({describe_peer(keep)})")
            removed += 1
    if removed:
        click.echo(f"Disconnected {cell_a.name} and {cell_b.name} ({connection_mode}).")
    else:
        click.echo(f"{cell_a.name} and {cell_b.name} are not connected; nothing to do.")


async def _fetch_for_disconnect(
    a: Context, b: Context
) -> tuple[Cell, Cell | None, PreflightError | None]:
    """Both cells; the destination None (with the reason) when its meshapi cannot be reached."""
    cell_a = await fetch_cell(a)
    try:
        return cell_a, await fetch_cell(b), None
    except PreflightError as e:
        return cell_a, None, e
