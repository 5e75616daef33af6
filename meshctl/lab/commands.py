"""``meshctl lab up|status|exec|down``: a complete local mesh on this Linux host (root).

Thin click commands over the lab modules: ``up`` plans (``topology``), records (``state``) and
builds (``up``), tearing down what it made when a step fails; ``status`` renders
``status.status_document``; ``exec`` runs a command inside a pod; ``down`` is
``down.teardown``. Bad flags are usage errors (exit 2); a refused or failed operation is one
line (exit 1); never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import click

from meshctl.contexts import ContextSelection
from meshctl.lab.down import leftovers, teardown
from meshctl.lab.driver import exec_argv
from meshctl.lab.state import LabState, StateError, load_state
from meshctl.lab.status import status_document, status_tables
from meshctl.lab.topology import (
    MAX_CELLS,
    MAX_NODES,
    MAX_PODS,
    TopologyError,
    check_lab_name,
    plan_lab,
)
from meshctl.lab.up import Progress, UpError, build, plan_state
from meshctl.output import output_option

__all__ = ["lab_group"]


def _lab_name(_: click.Context, __: click.Parameter, value: str) -> str:
    try:
        return check_lab_name(value)
    except TopologyError as e:
        raise click.BadParameter(str(e)) from e


_name_option = click.option(
    "--name",
    default="lab",
    show_default=True,
    callback=_lab_name,
    help="Lab name (a DNS label, at most 16 characters).",
)


def _emit(line: str) -> None:
    click.echo(line, err=True)


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _require_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("the lab needs root (network namespaces, cgroups, BPF)")


def _load(name: str) -> LabState:
    try:
        return load_state(name)
    except StateError as e:
        found = leftovers(name)
        hint = f"; left-overs found ({', '.join(found)}): run 'meshctl lab down --name {name}'"
        raise click.ClickException(f"{e}{hint if found else ''}") from None


@click.group("lab")
def lab_group() -> None:
    """A complete local mesh on this host: per cell an etcd, a meshapi and nodes with pods.

    Everything runs on loopback or inside the lab's own network namespaces; the host's root
    namespace and root cgroup are never changed.
    """


@lab_group.command("up")
@_name_option
@click.option(
    "--cells", type=click.IntRange(1, MAX_CELLS), default=2, show_default=True, help="Cells."
)
@click.option(
    "--nodes",
    type=click.IntRange(1, MAX_NODES),
    default=2,
    show_default=True,
    help="Nodes per cell.",
)
@click.option(
    "--pods-per-node",
    type=click.IntRange(0, MAX_PODS),
    default=2,
    show_default=True,
    help="Echo pods per node (backends of demo/echo).",
)
@click.option("--wait", is_flag=True, help="Return once every meshapi and agent is ready.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=90.0,
    show_default=True,
    help="Seconds to wait for each step (and for --wait).",
)
@click.pass_obj
def up_command(
    selection: ContextSelection,
    name: str,
    cells: int,
    nodes: int,
    pods_per_node: int,
    wait: bool,
    timeout: float,
) -> None:
    """Create lab NAME: cells alpha, beta, ... with their nodes and echo pods."""
    _require_root()
    found = leftovers(name)
    if found:
        raise click.ClickException(
            f"lab {name!r} already exists ({', '.join(found[:3])}"
            f"{', ...' if len(found) > 3 else ''}): run 'meshctl lab down --name {name}' first"
        )
    try:
        plan = plan_lab(name, cells=cells, nodes=nodes, pods_per_node=pods_per_node)
    except TopologyError as e:
        raise click.UsageError(str(e)) from e
    state = plan_state(plan, config_path=selection.config_path)
    started = time.monotonic()
    # SIGTERM (kill, a CI timeout) undoes the half-made lab like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        build(state, progress=Progress(name, _emit), wait=wait, timeout=timeout)
    except (Exception, KeyboardInterrupt) as e:
        step = e.step if isinstance(e, UpError) else "interrupted"
        _emit(f"[lab {name}] failed at {step}; removing what was made")
        report = teardown(name, config_paths=[selection.config_path], emit=_emit)
        left = f" (cleanup problems: {'; '.join(report.problems)})" if report.problems else ""
        reason = str(e) if isinstance(e, UpError) else f"{step}: {e or type(e).__name__}"
        raise click.ClickException(f"lab up failed at {reason}{left}") from None
    _emit(f"[lab {name}] up in {time.monotonic() - started:.1f}s")
    click.echo(status_tables(status_document(state)))


@lab_group.command("status")
@_name_option
@output_option("Output format (the JSON is documented in docs/lab.md).")
def status_command(name: str, output: str) -> None:
    """Every namespace, address, process and context of lab NAME, and its health."""
    doc = status_document(_load(name))
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(status_tables(doc))


@lab_group.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@_name_option
@click.argument("target", metavar="CELL/NODE/POD")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_command(ctx: click.Context, name: str, target: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside a pod: its network namespace and its node's cgroup.

    stdin, stdout and stderr are the pod command's; so is the exit code.
    Example: meshctl lab exec alpha/node0/echo-0-0 -- ip addr
    """
    _require_root()
    state = _load(name)
    pods = [
        f"{cell.name}/{node.name}/{pod.name}"
        for cell in state.cells
        for node in cell.nodes
        for pod in node.pods
    ]
    valid = ", ".join(pods) or "none"
    parts = target.split("/")
    if len(parts) != 3 or not all(parts):
        raise click.BadParameter(
            f"{target!r} is not CELL/NODE/POD (pods: {valid})", param_hint="CELL/NODE/POD"
        )
    if target not in pods:
        raise click.ClickException(f"no pod {target} in lab {name!r} (pods: {valid})")
    if command and command[0] == "--":  # options stop at TARGET, so "--" reaches us
        command = command[1:]
    if not command:
        raise click.UsageError("no command given (meshctl lab exec CELL/NODE/POD -- CMD...)")
    argv = exec_argv(state, parts[0], parts[1], parts[2], command)
    try:
        code = subprocess.run(argv, check=False).returncode
    except KeyboardInterrupt:
        code = 130
    ctx.exit(code if code >= 0 else 128 - code)


@lab_group.command("down")
@_name_option
@click.pass_obj
def down_command(selection: ContextSelection, name: str) -> None:
    """Remove lab NAME: processes, namespaces, cgroups, pins, contexts, state. Idempotent."""
    _require_root()
    report = teardown(name, config_paths=[Path(selection.config_path)], emit=_emit)
    if report.problems:
        raise click.ClickException(
            f"lab {name!r} not completely removed: {'; '.join(report.problems)}"
        )
    click.echo(f"Lab {name!r} removed: {report.summary()}.")
