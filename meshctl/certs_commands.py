"""`meshctl ca …` and `meshctl certs …`: the operator's side of the certs package.

Thin click commands over `certs`: check flags, call the library, print a short result. Bad input
becomes a click usage error (exit 2) naming the flag and the value; a refused or failed operation
(existing CA, unreadable file, expired CA) becomes a one-line error (exit 1); never a traceback.
`meshctl/cli.py` adds `ca_group` and `certs_group` to the root command.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from certs import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    MAX_DAYS,
    CertError,
    CertificateInfo,
    CertInputError,
    Role,
    TlsFiles,
    add_to_bundle,
    create_ca,
    inspect_certificate,
    issue_certificate,
    load_bundle,
    validate_cell_name,
    validate_dns_name,
    validate_ip_address,
    validate_node_name,
    validate_trust_domain,
)

ParamCallback = Callable[[click.Context, click.Parameter, object], object]


def _checked(validate: Callable[[str], object]) -> ParamCallback:
    """A click callback running a `certs` validator on an option's value(s).

    A failure becomes `click.BadParameter`, so the message names the option and the value.
    """

    def callback(ctx: click.Context, param: click.Parameter, value: object) -> object:
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            if not isinstance(item, str):
                continue  # an optional flag that was not given
            try:
                validate(item)
            except CertInputError as e:
                raise click.BadParameter(str(e), ctx=ctx, param=param) from e
        return value

    return callback


@contextmanager
def _reported_errors() -> Iterator[None]:
    """Turn library errors into click errors: bad input → usage error, anything else → exit 1."""
    try:
        yield
    except CertInputError as e:
        raise click.UsageError(str(e)) from e
    except CertError as e:
        raise click.ClickException(str(e)) from e


def _timestamp(info: CertificateInfo) -> str:
    return info.not_after.strftime("%Y-%m-%d %H:%M:%SZ")


@click.group("ca")
def ca_group() -> None:
    """Create the shared mesh CA and manage trust bundles."""


@ca_group.command("init")
@click.option(
    "--trust-domain",
    required=True,
    callback=_checked(validate_trust_domain),
    help="Lowercase DNS-like name of the mesh, e.g. mesh.example.org.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for ca.crt and ca.key (created with mode 0700).",
)
@click.option(
    "--days",
    type=click.IntRange(min=1, max=MAX_DAYS),
    default=3650,
    show_default=True,
    help="CA validity.",
)
def ca_init(trust_domain: str, out_dir: Path, days: int) -> None:
    """Create a new mesh CA. Refuses to overwrite an existing one."""
    with _reported_errors():
        cert_path = create_ca(trust_domain=trust_domain, out_dir=out_dir, days=days)
        info = inspect_certificate(cert_path)
    click.echo(f"Created the mesh CA for trust domain {trust_domain}")
    click.echo(f"  certificate:  {cert_path}")
    click.echo(f"  private key:  {out_dir / CA_KEY_FILE} (mode 0600, keep it secret)")
    click.echo(f"  not after:    {_timestamp(info)} ({days} days)")


@ca_group.command("add-to-bundle")
@click.option(
    "--bundle",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trust bundle to extend (created if missing), e.g. a TLS directory's ca.crt.",
)
@click.option(
    "--ca-cert",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA certificate (or bundle) to add.",
)
def ca_add_to_bundle(bundle: Path, ca_cert: Path) -> None:
    """Add a CA certificate to a trust bundle, for CA rotation. Never adds one twice."""
    with _reported_errors():
        added = add_to_bundle(bundle=bundle, ca_cert=ca_cert)
        total = len(load_bundle(bundle))
    if added:
        click.echo(f"Added {added} CA certificate(s) to {bundle}; it now trusts {total} CA(s)")
    else:
        click.echo(f"{bundle} already trusts {ca_cert}; nothing changed ({total} CA(s))")


@click.group("certs")
def certs_group() -> None:
    """Issue and inspect mesh mTLS certificates."""


@certs_group.command("issue", short_help="Issue a mesh mTLS certificate.")
@click.option(
    "--ca",
    "ca_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="CA directory made by 'meshctl ca init'.",
)
@click.option("--cell", required=True, callback=_checked(validate_cell_name), help="Cell name.")
@click.option(
    "--role",
    required=True,
    type=click.Choice([role.value for role in Role]),
    help="meshapi is the server certificate; agent, peer and admin are client certificates.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="TLS directory to write ca.crt, tls.crt and tls.key into.",
)
@click.option(
    "--dns",
    "dns_names",
    multiple=True,
    callback=_checked(validate_dns_name),
    help="DNS SAN (meshapi only; repeatable; default localhost).",
)
@click.option(
    "--ip",
    "ip_addresses",
    multiple=True,
    callback=_checked(validate_ip_address),
    help="IP SAN (meshapi only; repeatable; default 127.0.0.1).",
)
@click.option(
    "--days",
    type=click.IntRange(min=1, max=MAX_DAYS),
    default=365,
    show_default=True,
    help="Validity (clipped to the CA's).",
)
@click.option(
    "--node",
    callback=_checked(validate_node_name),
    help="Bind an agent certificate to this node (agent only).",
)
@click.option("--force", is_flag=True, help="Replace an existing tls.crt and tls.key.")
def certs_issue(
    ca_dir: Path,
    cell: str,
    role: str,
    out_dir: Path,
    dns_names: tuple[str, ...],
    ip_addresses: tuple[str, ...],
    days: int,
    node: str | None,
    force: bool,
) -> None:
    """Issue a certificate for spiffe://<trust-domain>/cell/<cell>/<role>."""
    with _reported_errors():
        cert_path = issue_certificate(
            ca_dir=ca_dir,
            cell=cell,
            role=Role(role),
            out_dir=out_dir,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            days=days,
            node=node,
            overwrite=force,
        )
        info = inspect_certificate(cert_path)
        ca_info = inspect_certificate(ca_dir / CA_CERT_FILE)
    files = TlsFiles.in_dir(out_dir)
    click.echo(f"Issued {info.spiffe_id}" + (f" for node {node}" if node else ""))
    click.echo(f"  files:      {files.bundle}  {files.cert}  {files.key}")
    sans = [*info.dns_names, *info.ip_addresses]
    if sans:
        click.echo(f"  SANs:       {', '.join(sans)}")
    if info.not_after == ca_info.not_after:
        click.echo(f"  not after:  {_timestamp(info)} ({info.days_left} days)")
        click.echo("  note: validity clipped to the CA's not-after; rotate the CA before then")
    else:
        click.echo(f"  not after:  {_timestamp(info)} ({days} days)")


def _text_report(info: CertificateInfo) -> list[tuple[str, str]]:
    rows = [
        ("Path", str(info.path)),
        ("Subject", info.subject),
        ("Issuer", info.issuer),
        ("CA", "yes" if info.is_ca else "no"),
        ("SPIFFE ID", info.spiffe_id or "-"),
        ("Trust domain", info.trust_domain or "-"),
        ("Cell", info.cell or "-"),
        ("Role", info.role.value if info.role else "-"),
        ("Node", info.node or "-"),
        ("DNS SANs", ", ".join(info.dns_names) or "-"),
        ("IP SANs", ", ".join(info.ip_addresses) or "-"),
        ("Not before", info.not_before.strftime("%Y-%m-%d %H:%M:%SZ")),
        ("Not after", _timestamp(info)),
        ("Days left", f"{info.days_left} ({info.status.value})"),
        ("Serial", f"{info.serial:x}"),
        ("SHA-256", info.sha256_fingerprint),
    ]
    if info.identity_error:
        rows.append(("Not a mesh identity", info.identity_error))
    return rows


@certs_group.command("inspect", short_help="Show a certificate's identity and expiry.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: a table for people; json: a stable object for scripts.",
)
def certs_inspect(file: Path, output: str) -> None:
    """Show a certificate's identity, SANs and expiry (the first one, for a bundle)."""
    with _reported_errors():
        info = inspect_certificate(file)
    if output == "json":
        click.echo(json.dumps(info.as_json(), indent=2))
        return
    rows = _text_report(info)
    width = max(len(label) for label, _ in rows) + 1
    for label, value in rows:
        click.echo(f"{label + ':':<{width}} {value}")
