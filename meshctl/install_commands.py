"""``meshctl install`` and ``meshctl uninstall``: cellmesh into (and out of) a Kubernetes cluster.

Thin click commands over ``meshctl.kube``: ``render`` makes the cell's objects from deploy/,
``tlssecrets`` issues its certificates (the CA key stays on this machine, or in the cell that
owns it: see that module), ``install`` applies them with server-side apply in dependency order
and waits for readiness. A second install changes nothing. ``--dry-run`` prints the YAML (Secrets
redacted) and talks to no cluster. Bad flags are usage errors (exit 2); a refused or failed
operation, or ``--wait`` running out, is a one-line error (exit 1). ``-o json`` prints
``{"context", "cell", "objects": [{"kind", "namespace", "name", "action", "note"}],
"admin_tls_dir", "ready", "not_ready"}`` (install) or ``{"context", "objects", "left"}``
(uninstall). ``meshctl/cli.py`` adds both commands to the root command.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import yaml

from certs import CertInputError, validate_cell_name, validate_dns_name, validate_ip_address
from meshctl.contexts import ContextSelection
from meshctl.kube.access import admin_tls_dir
from meshctl.kube.client import KubeClient, KubeContextError, KubeError
from meshctl.kube.install import (
    Applied,
    apply_all,
    leftovers,
    readiness_problems,
    uninstall,
    wait_until,
)
from meshctl.kube.render import CellSpec, RenderError, apply_order, render_cell
from meshctl.kube.tlssecrets import (
    CaSource,
    TlsSecretError,
    ensure_admin_tls,
    load_ca_from_context,
    load_ca_from_dir,
    planned_tls_secrets,
    redacted,
    remove_admin_tls,
)
from meshctl.output import format_table, output_option

__all__ = ["install_command", "uninstall_command"]


def _check_cell(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return validate_cell_name(value)
    except CertInputError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from e


def _check_annotation(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in value:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        result[key] = val
    return result


def _check_san(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    for item in value:
        try:
            validate_ip_address(item)
            continue
        except CertInputError:
            pass
        try:
            validate_dns_name(item)
        except CertInputError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from e
    return value


@contextmanager
def _reported_errors() -> Iterator[None]:
    """Bad input → usage error (exit 2); a failed operation → one-line error (exit 1)."""
    try:
        yield
    except (KubeContextError, RenderError) as e:
        raise click.UsageError(str(e)) from e
    except (KubeError, TlsSecretError) as e:
        raise click.ClickException(str(e)) from e


_kubeconfig_option = click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="kubeconfig file [default: $KUBECONFIG, else ~/.kube/config].",
)


def _rows(applied: list[Applied]) -> list[tuple[str, str, str, str]]:
    return [
        (a.kind, f"{a.namespace}/{a.name}" if a.namespace else a.name, a.action, a.note)
        for a in applied
    ]


@click.command("install", short_help="Install cellmesh into a Kubernetes cluster (one cell).")
@click.option("--kube-context", required=True, metavar="CTX", help="kube context to install into.")
@_kubeconfig_option
@click.option("--cell", required=True, callback=_check_cell, help="The cell's name.")
@click.option("--cell-id", required=True, type=click.IntRange(1, 255), help="Cell id, 1-255.")
@click.option(
    "--pod-cidr",
    "pod_cidrs",
    required=True,
    multiple=True,
    metavar="CIDR",
    help="The cluster's pod CIDR (repeatable).",
)
@click.option(
    "--ca",
    "ca_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Mesh CA directory on this machine (from 'meshctl ca init').",
)
@click.option(
    "--ca-from-context",
    metavar="CTX2",
    help="Sign with the mesh CA kept in CTX2's Secret cellmesh/cellmesh-ca (read into memory).",
)
@click.option(
    "--service-annotation",
    "service_annotations",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_check_annotation,
    help="Annotation for meshapi's LoadBalancer Service, e.g. the cloud's internal-LB ones.",
)
@click.option(
    "--meshapi-san",
    "meshapi_sans",
    multiple=True,
    metavar="NAME|IP",
    callback=_check_san,
    help="Another DNS name or IP meshapi's certificate holds, e.g. its load balancer's.",
)
@click.option(
    "--deploy-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="deploy/ directory [default: $CELLMESH_DEPLOY_DIR, else the one shipped with meshctl].",
)
@click.option("--dry-run", is_flag=True, help="Print the YAML (Secrets redacted); change nothing.")
@click.option("--wait", is_flag=True, help="Return when meshapi and every agent are ready.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Seconds --wait waits.",
)
@output_option()
@click.pass_obj
def install_command(
    selection: ContextSelection,
    kube_context: str,
    kubeconfig: Path | None,
    cell: str,
    cell_id: int,
    pod_cidrs: tuple[str, ...],
    ca_dir: Path | None,
    ca_from_context: str | None,
    service_annotations: dict[str, str],
    meshapi_sans: tuple[str, ...],
    deploy_dir: Path | None,
    dry_run: bool,
    wait: bool,
    timeout: float,
    output: str,
) -> None:
    """Install cellmesh into kube context CTX as cell NAME with id N.

    Renders deploy/ for the cell, issues its certificates from the mesh CA into the Secrets
    cellmesh-meshapi-tls and cellmesh-agent-tls (and meshctl's admin certificate into
    <dir of --config>/kube/CTX/admin/), and server-side applies every object. Running it again
    changes nothing.
    """
    if (ca_dir is None) == (ca_from_context is None):
        raise click.UsageError("give exactly one of --ca DIR and --ca-from-context CTX2")
    if ca_dir is not None and not (ca_dir / "ca.key").is_file():
        raise click.BadParameter(
            f"{ca_dir} holds no ca.key (a CA directory from 'meshctl ca init')",
            param_hint="--ca",
        )
    with _reported_errors():
        spec = CellSpec(cell, cell_id, pod_cidrs, service_annotations)
        objects = render_cell(spec, deploy_dir=deploy_dir)
        if dry_run:
            _print_dry_run(objects, spec, ca_dir=ca_dir, output=output)
            return
        with KubeClient.from_context(kube_context, kubeconfig=kubeconfig) as kube:
            source = _load_ca(ca_dir, ca_from_context, kubeconfig=kubeconfig)
            secrets = planned_tls_secrets(
                source,
                cell=cell,
                existing=lambda name: kube.get("v1", "Secret", name, "cellmesh"),
                extra_sans=meshapi_sans,
            )
            notes = {f"Secret/{s['metadata']['name']}": f"certificate {why}" for s, why in secrets}
            applied = apply_all(
                kube, apply_order([*objects, *(s for s, _ in secrets)]), notes=notes
            )
            admin_dir = admin_tls_dir(selection.config_path, kube.context)
            admin = ensure_admin_tls(source, cell=cell, out_dir=admin_dir)
            not_ready = (
                wait_until(lambda: readiness_problems(kube), timeout=timeout) if wait else []
            )
    _print_install(kube_context, cell, applied, admin_dir, admin, wait, not_ready, output)
    if not_ready:
        raise click.ClickException(f"not ready after {timeout:g} s: " + "; ".join(not_ready))


def _load_ca(ca_dir: Path | None, ca_context: str | None, *, kubeconfig: Path | None) -> CaSource:
    if ca_dir is not None:
        return load_ca_from_dir(ca_dir)
    assert ca_context is not None
    with KubeClient.from_context(ca_context, kubeconfig=kubeconfig) as owner:
        return load_ca_from_context(owner)


def _print_dry_run(
    objects: list[dict[str, Any]], spec: CellSpec, *, ca_dir: Path | None, output: str
) -> None:
    if ca_dir is not None:
        load_ca_from_dir(ca_dir)  # a local check only: the CA must be usable
    placeholders = [
        redacted(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": name,
                    "namespace": "cellmesh",
                    "labels": {
                        "app.kubernetes.io/part-of": "cellmesh",
                        "app.kubernetes.io/component": component,
                    },
                },
                "type": "kubernetes.io/tls",
            }
        )
        for name, component in (
            ("cellmesh-meshapi-tls", "meshapi"),
            ("cellmesh-agent-tls", "nodeagent"),
        )
    ]
    docs = apply_order([*objects, *placeholders])
    if output == "json":
        click.echo(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}, indent=2))
        return
    click.echo(f"# cellmesh for cell {spec.cell} (id {spec.cell_id}); Secrets redacted")
    click.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)


def _print_install(
    context: str,
    cell: str,
    applied: list[Applied],
    admin_dir: Path,
    admin: str,
    waited: bool,
    not_ready: list[str],
    output: str,
) -> None:
    if output == "json":
        doc = {
            "context": context,
            "cell": cell,
            "objects": [a.as_json() for a in applied],
            "admin_tls_dir": str(admin_dir),
            "admin_certificate": admin,
            "ready": (not not_ready) if waited else None,
            "not_ready": not_ready,
        }
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(format_table(("KIND", "NAME", "ACTION", "NOTE"), _rows(applied)))
    click.echo(f"meshctl's admin certificate for {cell}: {admin_dir} ({admin})")
    changed = sum(a.action != "unchanged" for a in applied)
    click.echo(f"Installed cell {cell} in kube context {context}: {changed} object(s) changed.")
    if waited and not not_ready:
        click.echo("meshapi and every agent are ready.")


@click.command("uninstall", short_help="Remove cellmesh from a Kubernetes cluster.")
@click.option("--kube-context", required=True, metavar="CTX", help="kube context to clean.")
@_kubeconfig_option
@click.option("--wait", is_flag=True, help="Return when everything is gone.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Seconds --wait waits.",
)
@output_option()
@click.pass_obj
def uninstall_command(
    selection: ContextSelection,
    kube_context: str,
    kubeconfig: Path | None,
    wait: bool,
    timeout: float,
    output: str,
) -> None:
    """Remove everything 'meshctl install' made in kube context CTX. Safe to repeat.

    That is every object labelled app.kubernetes.io/part-of=cellmesh, the namespace (kept if it
    holds the mesh CA's Secret cellmesh-ca) and meshctl's admin certificate for the context.
    """
    with _reported_errors(), KubeClient.from_context(kube_context, kubeconfig=kubeconfig) as kube:
        removed = uninstall(kube)
        admin_dir = admin_tls_dir(selection.config_path, kube.context)
        if remove_admin_tls(admin_dir):
            removed.append(Applied("admin certificate", None, str(admin_dir), "deleted"))
        left = wait_until(lambda: leftovers(kube), timeout=timeout) if wait else []
    if output == "json":
        doc = {"context": kube_context, "objects": [a.as_json() for a in removed], "left": left}
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(format_table(("KIND", "NAME", "ACTION", "NOTE"), _rows(removed)))
        click.echo(f"Uninstalled cellmesh from kube context {kube_context}.")
    if left:
        raise click.ClickException(f"still present after {timeout:g} s: " + ", ".join(left))
