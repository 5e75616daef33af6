"""Fixtures shared by the meshctl tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def server_logs_outside_cli_output() -> Iterator[None]:
    """Keep in-process servers' log lines out of what CliRunner captures as meshctl's output.

    CliRunner swaps ``sys.stdout`` for the whole process while a command runs, and structlog's
    default logger prints to whatever ``sys.stdout`` is at the time.
    """
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    yield
    structlog.configure(**saved)
