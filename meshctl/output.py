"""How meshctl prints: the shared ``-o/--output`` option and kubectl-style tables.

Every command that prints a document takes ``output_option`` (``table`` or ``json``) and renders
its rows with ``format_table``; the connectivity suite's report
(``meshctl.connectivity_commands``) uses the same table so every meshctl table reads alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import click

__all__ = ["format_table", "output_option"]

_F = TypeVar("_F", bound=Callable[..., Any])


def output_option(help: str = "Output format.") -> Callable[[_F], _F]:
    """``-o/--output [table|json]``, default ``table``; ``help`` may say where JSON is described."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help=help,
    )


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces, kubectl style."""
    table = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    )
