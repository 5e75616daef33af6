"""The root ``meshctl`` command: global options, ``context ...``, and every command group.

``--config`` (``MESHCTL_CONFIG``) names the contexts file and ``--context`` (``MESHCTL_CONTEXT``)
the cell to talk to; both land in a ``ContextSelection`` that commands receive as the click
context object and resolve only when they need a meshapi. ``context add|list|use|delete`` edit
the contexts file through ``meshctl.contexts``. Bad input is a usage error (exit 2), a refused or
failed operation a one-line error (exit 1); never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from meshctl.bpf_commands import bpf_group
from meshctl.certs_commands import ca_group, certs_group
from meshctl.connect_commands import connect_command, disconnect_command
from meshctl.connectivity_commands import connectivity_group
from meshctl.contexts import (
    DEFAULT_CONFIG_PATH,
    Context,
    ContextError,
    ContextSelection,
    InvalidContextError,
    add_context,
    delete_context,
    load_config,
    use_context,
)
from meshctl.explain_commands import explain_group
from meshctl.install_commands import install_command, uninstall_command
from meshctl.lab import lab_group
from meshctl.mesh_commands import apply_command, delete_command, services_command
from meshctl.output import format_table, output_option
from meshctl.status_commands import status_command

__all__ = ["cli", "main"]


@click.group("meshctl")
@click.option(
    "--context",
    "context_name",
    envvar="MESHCTL_CONTEXT",
    metavar="NAME",
    help="Context (cell) to talk to [env MESHCTL_CONTEXT; default: the current context].",
)
@click.option(
    "--config",
    "config_path",
    envvar="MESHCTL_CONFIG",
    type=click.Path(dir_okay=False, path_type=Path),
    default=str(DEFAULT_CONFIG_PATH),
    show_default=True,
    help="Contexts file [env MESHCTL_CONFIG].",
)
@click.version_option(package_name="cellmesh", prog_name="meshctl")
@click.pass_context
def cli(click_ctx: click.Context, context_name: str | None, config_path: Path) -> None:
    """Operate a cellmesh: contexts, certificates, services."""
    click_ctx.obj = ContextSelection(config_path.expanduser(), context_name or None)


@contextmanager
def _reported_errors() -> Iterator[None]:
    """Invalid input -> usage error (exit 2); any other context problem -> exit 1."""
    try:
        yield
    except InvalidContextError as e:
        raise click.UsageError(str(e)) from e
    except ContextError as e:
        raise click.ClickException(str(e)) from e


@cli.group("context")
def context_group() -> None:
    """Manage contexts: which cell's meshapi to talk to, with which certificate."""


@context_group.command("add")
@click.argument("name")
@click.option("--server", required=True, metavar="HOST:PORT", help="The cell's meshapi address.")
@click.option(
    "--tls-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory with ca.crt, tls.crt and tls.key (from 'meshctl certs issue').",
)
@click.option("--server-name", help="TLS server name to verify instead of the server's host.")
@click.option("--use", is_flag=True, help="Make it the current context.")
@click.pass_obj
def context_add(
    selection: ContextSelection,
    name: str,
    server: str,
    tls_dir: Path,
    server_name: str | None,
    use: bool,
) -> None:
    """Add context NAME (replacing one of the same name)."""
    with _reported_errors():
        cfg = add_context(
            selection.config_path, Context(name, server, tls_dir, server_name), use=use
        )
    note = "; it is the current context" if cfg.current == name else ""
    click.echo(f"Context {name!r} added ({server}){note}.")


@context_group.command("list")
@output_option()
@click.pass_obj
def context_list(selection: ContextSelection, output: str) -> None:
    """List the contexts; the current one is marked with '*'."""
    with _reported_errors():
        cfg = load_config(selection.config_path)
    contexts = [cfg.contexts[name] for name in sorted(cfg.contexts)]
    if output == "json":
        items = [
            {
                "name": ctx.name,
                "current": ctx.name == cfg.current,
                "server": ctx.server,
                "tls_dir": str(ctx.tls_dir),
                "server_name": ctx.server_name,
            }
            for ctx in contexts
        ]
        click.echo(json.dumps({"current": cfg.current, "contexts": items}, indent=2))
        return
    if not contexts:
        click.echo(f"No contexts in {selection.config_path}.", err=True)
        return
    rows = [
        (
            "*" if ctx.name == cfg.current else "",
            ctx.name,
            ctx.server,
            ctx.server_name or "",
            str(ctx.tls_dir),
        )
        for ctx in contexts
    ]
    click.echo(format_table(("CURRENT", "NAME", "SERVER", "SERVER-NAME", "TLS-DIR"), rows))


@context_group.command("use")
@click.argument("name")
@click.pass_obj
def context_use(selection: ContextSelection, name: str) -> None:
    """Make context NAME the current one."""
    with _reported_errors():
        use_context(selection.config_path, name)
    click.echo(f"Switched to context {name!r}.")


@context_group.command("delete")
@click.argument("name")
@click.pass_obj
def context_delete(selection: ContextSelection, name: str) -> None:
    """Delete context NAME (its certificate files stay where they are)."""
    with _reported_errors():
        cfg = load_config(selection.config_path)
        was_current = cfg.current == name
        delete_context(selection.config_path, name)
    note = "; no context is current now" if was_current else ""
    click.echo(f"Deleted context {name!r}{note}.")


cli.add_command(ca_group)
cli.add_command(certs_group)
cli.add_command(apply_command)
cli.add_command(delete_command)
cli.add_command(services_command)
cli.add_command(bpf_group)
cli.add_command(lab_group)
cli.add_command(connect_command)
cli.add_command(disconnect_command)
cli.add_command(status_command)
cli.add_command(explain_group)
cli.add_command(connectivity_group)
cli.add_command(install_command)
cli.add_command(uninstall_command)


def main() -> None:
    """The ``meshctl`` console script."""
    cli(prog_name="meshctl")
