"""``meshctl connect`` and ``disconnect``: join two cells with Peer records, after a preflight.

Flow: ``--context A`` and ``--destination-context B`` -> both contexts resolved -> preflight, each
failure one message that names the fix: certificate files valid long enough, each side trusting
the other's CA, both meshapis answering ``GetCell``, both meshapi server certificates (fetched
over TLS with the admin certificate) valid, trusted and matching the address, distinct cell names
and ids, pod and node CIDRs not overlapping -> the desired Peer records compared with the current
ones -> only what differs is written. Re-running writes nothing; ``--dry-run`` stops after the
preflight. ``disconnect`` deletes the same records.

By kube context (``--kube-context A --destination-kube-context B``): each cell's meshapi is
found from its Service (``meshctl.kube.access``; ``--endpoint`` / ``--destination-endpoint`` win),
the preflight is the same, and the Peer records are written where Kubernetes mode keeps them --
each cluster's ConfigMap ``cellmesh/cellmesh-peers`` (``meshctl.kube.peerstore``, server-side
apply), which meshapi's Kubernetes source turns into Peer records; so the peering survives an
etcd wipe.
The cells' current peers are read from those ConfigMaps, not from meshapi.

Modes (Cilium's): bidirectional -- each cell's record for the other watches and exports;
unicast A -> B -- A's agents read B and B never reads A: A's record for B has ``export`` off (B's
agents are refused by A), B's record for A has ``watch`` off (a grant: B's meshapi admits A's
agents, B's agents do not watch A).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import click

from certs import CertError, ExpiryStatus, describe_certificate, inspect_certificate, verify_chain
from certs.inspection import CertificateInfo
from certs.pemfiles import parse_certificate
from meshcore.client import MeshApiError, MeshClient, PeerUnavailable
from meshcore.model import ClashKind, Kind, Peer, find_cell_clash, find_peer_id_clash, peer_key
from meshcore.tls import TlsConfigError
from meshctl.contexts import (
    Context,
    ContextError,
    ContextSelection,
    InvalidContextError,
    check_server,
    resolve_context,
)
from meshctl.kube.access import KubeCellContext, kube_cell_context, read_server_certificate
from meshctl.kube.options import KUBECONFIG_OPTION
from meshctl.kube.peerstore import read_peers, where, write_peers
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
    return read_server_certificate(ctx.server, ctx.tls_dir, ctx.server_name, timeout=timeout)


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
        fix = (
            "re-run 'meshctl install' for that cell"
            if isinstance(ctx, KubeCellContext)
            else f"set the name the certificate has with 'meshctl context add {ctx.name} "
            "--server-name NAME ...'"
        )
        raise PreflightError(
            f"{what} is valid for {valid}, not for {host!r}, which agents of {other.name!r} will "
            f"dial: reissue it with that name (meshctl certs issue --dns/--ip), or {fix}"
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
    except PeerUnavailable as e:
        if isinstance(ctx, KubeCellContext):
            raise PreflightError(
                f"{describe_mesh_error(e, ctx)} -- check that meshapi runs in kube context "
                f"{ctx.kube_context!r} and that {ctx.server} (from {ctx.source}) is reachable "
                "from here: a timeout usually means a security group or firewall drops TCP to "
                f"port {ctx.server.rpartition(':')[2]}"
            ) from e
        raise PreflightError(
            f"{describe_mesh_error(e, ctx)} -- check that it runs and that the context points "
            f"at it ('meshctl context add {ctx.name} --server HOST:PORT ...')"
        ) from e
    except MeshApiError as e:
        if isinstance(ctx, KubeCellContext):
            raise PreflightError(
                f"{describe_mesh_error(e, ctx)} (kube context {ctx.kube_context!r}, address from "
                f"{ctx.source})"
            ) from e
        raise PreflightError(
            f"{describe_mesh_error(e, ctx)} -- check that it runs and that the context points "
            f"at it ('meshctl context add {ctx.name} --server HOST:PORT ...')"
        ) from e
    if isinstance(ctx, KubeCellContext):
        # Kubernetes mode: the cluster's ConfigMap is the peering; meshapi's records follow it.
        peers = await asyncio.to_thread(read_peers, ctx, info.config.name)
    else:
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
    if isinstance(cell.ctx, KubeCellContext):
        peers = {**cell.peers, **{p.name: p for p in puts}}
        gone = {p.name for p in cell.peers.values() if peer_key(cell.name, p.name) in deletes}
        kept = {n: p for n, p in peers.items() if n not in gone}
        await asyncio.to_thread(write_peers, cell.ctx, cell.name, kept)
        cell.peers = kept
        return
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


def _contexts(selection: ContextSelection, chosen: dict[str, Any]) -> tuple[Context, Context]:
    """Both cells: by meshctl context (``--context``/``--destination-context``), or by kube
    context (``--kube-context``/``--destination-kube-context``, endpoints optional)."""
    kube_a, kube_b = chosen["kube_context"], chosen["destination_kube_context"]
    by_kube = kube_a is not None or kube_b is not None
    if by_kube:
        mixed = [
            flag
            for flag, key in (("--context", "context_name"), ("--destination-context", "dest"))
            if chosen[key] is not None
        ]
        if mixed:
            raise click.UsageError(
                f"{' and '.join(mixed)} cannot be combined with --kube-context / "
                "--destination-kube-context: address both cells the same way"
            )
        if kube_b is None:
            raise click.UsageError("--kube-context needs --destination-kube-context")
        for flag in ("endpoint", "destination_endpoint"):
            if chosen[flag] is not None:
                try:
                    check_server(chosen[flag])
                except InvalidContextError as e:
                    raise click.UsageError(f"--{flag.replace('_', '-')}: {e}") from None
        ka = kube_cell_context(
            kube_a,
            config_path=selection.config_path,
            kubeconfig=chosen["kubeconfig"],
            endpoint=chosen["endpoint"],
            endpoint_flag="--endpoint",
        )
        kb = kube_cell_context(
            kube_b,
            config_path=selection.config_path,
            kubeconfig=chosen["kubeconfig"],
            endpoint=chosen["destination_endpoint"],
            endpoint_flag="--destination-endpoint",
        )
        if ka.name == kb.name:
            raise click.UsageError(
                f"--kube-context and --destination-kube-context are both {ka.name!r}"
            )
        return ka, kb
    for flag in ("endpoint", "destination_endpoint", "kubeconfig"):
        if chosen[flag] is not None:
            option = "--" + flag.replace("_", "-")
            raise click.UsageError(f"{option} needs --kube-context / --destination-kube-context")
    if chosen["dest"] is None:
        raise click.UsageError(
            "missing --destination-context (or --kube-context A --destination-kube-context B)"
        )
    a = resolve_context(selection.config_path, chosen["context_name"] or selection.context_name)
    b = resolve_context(selection.config_path, chosen["dest"])
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
                "dest",
                metavar="NAME",
                help="Context of the cell to connect to.",
            ),
            click.option(
                "--kube-context",
                metavar="NAME",
                help="Kube context of the source cell (its meshapi Service) instead of "
                "--context [default with --destination-kube-context: the current one].",
            ),
            click.option(
                "--destination-kube-context",
                metavar="NAME",
                help="Kube context of the cell to connect to.",
            ),
            click.option(
                "--endpoint",
                metavar="HOST:PORT",
                help="The source cell's meshapi address (instead of its Service's LoadBalancer "
                "ingress).",
            ),
            click.option(
                "--destination-endpoint",
                metavar="HOST:PORT",
                help="The destination cell's meshapi address, e.g. an NLB's DNS name and port "
                "(instead of its Service's LoadBalancer ingress).",
            ),
            KUBECONFIG_OPTION,
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


def _where(cell: Cell) -> str:
    """Where a cell's Peer records live, for the progress lines."""
    if isinstance(cell.ctx, KubeCellContext):
        return f" [{where(cell.ctx)}]"
    return ""


@click.command("connect")
@_options
@click.option("--dry-run", is_flag=True, help="Run the preflight checks only; change nothing.")
def connect_command(
    selection: ContextSelection, connection_mode: str, dry_run: bool, **chosen: Any
) -> None:
    """Connect two cells: preflight, then a Peer record in each.

    Unicast: the source's record watches the destination; the destination's only admits the
    source's agents (it never reads the source). With kube contexts the records are written
    into each cluster's ConfigMap cellmesh/cellmesh-peers.
    """
    with _reported():
        a, b = _contexts(selection, chosen)
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
            existed = p.name in src.peers
            verb = "would update" if existed else "would add"
            if not dry_run:
                asyncio.run(_write(src, puts=[p]))
                verb = "updated" if existed else "added"
            click.echo(
                f"cell {src.name}: peer {p.name} ({p.address}) {verb} ({describe_peer(p)})"
                + _where(src)
            )
    if not changes:
        click.echo(f"{cell_a.name} and {cell_b.name} are already connected ({connection_mode}).")
    if dry_run:
        click.echo("Dry run: nothing was changed.")
    elif changes:
        click.echo(f"Connected {cell_a.name} and {cell_b.name} ({connection_mode}).")


@click.command("disconnect")
@_options
def disconnect_command(selection: ContextSelection, connection_mode: str, **chosen: Any) -> None:
    """Disconnect two cells: delete their Peer records (agents drain the peer at once).

    Unicast removes the source's watch of the destination and the destination's grant to the
    source; a record that still carries the other direction stays with that direction only.

    When the destination's meshapi is down, the source's Peer record whose address is the
    destination context's server is still removed; its own record waits for a re-run.
    """
    with _reported():
        a, b = _contexts(selection, chosen)
        cell_a, cell_b, unreachable = asyncio.run(_fetch_for_disconnect(a, b))
        if cell_b is None:
            assert unreachable is not None
            gone = [p.name for p in cell_a.peers.values() if p.address == b.server]
            if not gone:
                raise unreachable
            for name in gone:
                asyncio.run(_write(cell_a, deletes=[peer_key(cell_a.name, name)]))
                click.echo(f"cell {cell_a.name}: peer {name} removed{_where(cell_a)}")
            # Both modes leave a record in the destination (unicast: its grant to this cell).
            raise PreflightError(
                f"{unreachable}; the Peer record for {cell_a.name} in the cell behind context "
                f"{b.name!r} stays: run 'meshctl disconnect' again once it is reachable"
            )
        removed = 0
        for src, name, keep in undesired_peers(cell_a, cell_b, connection_mode):
            if keep is None:
                asyncio.run(_write(src, deletes=[peer_key(src.name, name)]))
                click.echo(f"cell {src.name}: peer {name} removed{_where(src)}")
            else:
                asyncio.run(_write(src, puts=[keep]))
                click.echo(
                    f"cell {src.name}: peer {name} kept ({describe_peer(keep)}){_where(src)}"
                )
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
