"""``meshctl lab up|status|exec|stop|start|restart|down``: a complete local mesh on this host.

Thin click commands over the lab modules: ``up`` plans (``topology``), records (``state``) and
builds (``up``), tearing down what it made when a step fails (its logs kept, the failing
process's last lines in the error); ``status`` renders ``status.status_document``; ``exec``
runs a command inside a pod; ``stop|start|restart`` are ``control``'s; ``down`` is
``down.teardown``. Bad flags are usage errors (exit 2); a refused or failed operation is one
line (exit 1, plus a log's last lines when a process exited); never a traceback. Root only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import click

from meshctl.contexts import ContextSelection
from meshctl.lab import control, procs
from meshctl.lab.down import leftovers, teardown
from meshctl.lab.driver import exec_argv
from meshctl.lab.kubeup import KubeSeedError
from meshctl.lab.state import SOURCES, LabState, StateError, load_state
from meshctl.lab.status import status_document, status_tables
from meshctl.lab.topology import (
    MAX_CELLS,
    MAX_NODES,
    MAX_PODS,
    TopologyError,
    check_lab_name,
    plan_lab,
)
from meshctl.lab.up import Progress, UpError, build, keep_logs, logs_dir, plan_state
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
@click.option(
    "--source",
    type=click.Choice(SOURCES),
    default="standalone",
    show_default=True,
    help="standalone: agents register nodes and endpoints; kubernetes: each cell gets a "
    "Kubernetes API double holding them as Node, Service and EndpointSlice objects, which "
    "its meshapi watches (agents run as a DaemonSet runs them).",
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
    source: str,
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
    state = plan_state(plan, config_path=selection.config_path, source=source)
    started = time.monotonic()
    # SIGTERM (kill, a CI timeout) undoes the half-made lab like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        build(state, progress=Progress(name, _emit), wait=wait, timeout=timeout)
    except (Exception, KeyboardInterrupt) as e:
        step = e.step if isinstance(e, UpError) else "interrupted"
        _emit(f"[lab {name}] failed at {step}; removing what was made")
        reason = str(e) if isinstance(e, UpError) else f"{step}: {e or type(e).__name__}"
        failed_log = e.log if isinstance(e, UpError) else None
        logs = logs_dir(name)
        kept = keep_logs(name)  # the clean-up removes the state directory, logs/ with it
        if kept is not None:
            reason = reason.replace(str(logs), str(kept))
            if failed_log is not None and failed_log.is_relative_to(logs):
                failed_log = kept / failed_log.relative_to(logs)
        tail = _tail(failed_log) if failed_log is not None else ""  # read before the clean-up
        report = teardown(name, config_paths=[selection.config_path], emit=_emit)
        left = f" (cleanup problems: {'; '.join(report.problems)})" if report.problems else ""
        left += f"\nlogs kept in {kept}/" if kept is not None else ""
        raise click.ClickException(f"lab up failed at {reason}{left}{tail}") from None
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


def _tail(log: Path) -> str:
    lines = procs.log_tail(log, 20).splitlines()
    return f"\nlast lines of {log}:\n" + "\n".join(f"  | {line}" for line in lines)


def _target_option(f: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            click.argument("target", metavar="CELL[/NODE]"),
            click.option(
                "--component",
                required=True,
                type=click.Choice(control.KINDS),
                help="etcd or meshapi: the cell's; agent: CELL/NODE's, or every agent of CELL.",
            ),
            click.option(
                "--wipe",
                is_flag=True,
                help="etcd only: empty its data directory (after stopping, before starting).",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0.1),
                default=30.0,
                show_default=True,
                help="Seconds: for a stopped process to exit before SIGKILL; for a started "
                "one to serve HTTP.",
            ),
        ]
    ):
        f = option(f)
    return f


_signal_option = click.option(
    "--signal",
    "sig",
    type=click.Choice(["TERM", "KILL"], case_sensitive=False),
    default="TERM",
    show_default=True,
    help="TERM: a clean stop (SIGKILL after --timeout); KILL: a crash, at once.",
)


def _control(
    action: Callable[..., list[control.Component]],
    name: str,
    target: str,
    component: str,
    **kwargs: object,
) -> None:
    _require_root()
    try:
        action(name, target, component, report=click.echo, **kwargs)
    except (control.TargetError, StateError, KubeSeedError) as e:
        raise click.ClickException(str(e)) from None
    except procs.ProcessError as e:
        raise click.ClickException(str(e) + (_tail(e.log) if e.log else "")) from None


def _no_wipe_unless_etcd(component: str, wipe: bool) -> None:
    if wipe and component != "etcd":
        raise click.UsageError(
            f"--wipe empties etcd's data directory; it does not apply to --component {component}"
        )


@lab_group.command("stop")
@_name_option
@_target_option
@_signal_option
def stop_command(
    name: str, target: str, component: str, wipe: bool, timeout: float, sig: str
) -> None:
    """Stop a component: etcd or meshapi of CELL, the agent of CELL/NODE (all agents of CELL).

    Rehearse a crash with --signal KILL; `lab status` shows it as stopped until `lab start`.

    \b
    Example: meshctl lab stop beta --component meshapi --signal KILL
    """
    _no_wipe_unless_etcd(component, wipe)
    signum = signal.Signals[f"SIG{sig.upper()}"]
    _control(
        control.stop_components, name, target, component, sig=signum, timeout=timeout, wipe=wipe
    )


@lab_group.command("start")
@_name_option
@_target_option
def start_command(name: str, target: str, component: str, wipe: bool, timeout: float) -> None:
    """Start a stopped component again with the command line `up` gave it (same ports, log).

    Returns once it serves HTTP (etcd /health, meshapi and agent /healthz).

    \b
    Example: meshctl lab start beta --component meshapi
    """
    _no_wipe_unless_etcd(component, wipe)
    _control(control.start_components, name, target, component, timeout=timeout, wipe=wipe)


@lab_group.command("restart")
@_name_option
@_target_option
@_signal_option
def restart_command(
    name: str, target: str, component: str, wipe: bool, timeout: float, sig: str
) -> None:
    """Stop and start a component (with --wipe: etcd comes back empty).

    \b
    Example: meshctl lab restart alpha/node0 --component agent --signal KILL
    """
    _no_wipe_unless_etcd(component, wipe)
    signum = signal.Signals[f"SIG{sig.upper()}"]
    _control(
        control.restart_components,
        name,
        target,
        component,
        sig=signum,
        timeout=timeout,
        wipe=wipe,
    )


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
