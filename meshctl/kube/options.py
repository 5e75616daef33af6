"""The click options that let a meshctl command address a cell by kube context.

``kube_options`` adds ``--kube-context``, ``--endpoint HOST:PORT`` and ``--kubeconfig`` to
``status``, ``services`` and ``explain``; ``kube_cell`` turns them into the cell's ``Context``
(``meshctl.kube.access``) -- or None when no ``--kube-context`` was given and the command
uses meshctl contexts as before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from meshctl.contexts import Context
from meshctl.kube.access import kube_cell_context

__all__ = ["KUBECONFIG_OPTION", "kube_cell", "kube_options"]

_F = TypeVar("_F", bound=Callable[..., Any])

KUBECONFIG_OPTION = click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Kubeconfig file for --kube-context [default: $KUBECONFIG, else ~/.kube/config].",
)


def kube_options(fn: _F) -> _F:
    """``--kube-context NAME``, ``--endpoint HOST:PORT`` and ``--kubeconfig FILE``."""
    for option in reversed(
        [
            click.option(
                "--kube-context",
                metavar="NAME",
                help="Address the cell by kube context (its meshapi Service) instead of --context.",
            ),
            click.option(
                "--endpoint",
                metavar="HOST:PORT",
                help="With --kube-context: the meshapi address to use instead of the "
                "Service's LoadBalancer ingress.",
            ),
            KUBECONFIG_OPTION,
        ]
    ):
        fn = option(fn)
    return fn


def kube_cell(
    config_path: Path,
    *,
    kube_context: str | None,
    endpoint: str | None,
    kubeconfig: Path | None,
    context_name: str | None = None,
) -> Context | None:
    """The cell's Context by kube context; None when none was asked for. Usage errors for
    options that only make sense with ``--kube-context``, or that contradict it."""
    if kube_context is None:
        if endpoint is not None:
            raise click.UsageError("--endpoint needs --kube-context")
        return None
    if context_name is not None:
        raise click.UsageError("pass either --context or --kube-context, not both")
    return kube_cell_context(
        kube_context, config_path=config_path, kubeconfig=kubeconfig, endpoint=endpoint
    )
