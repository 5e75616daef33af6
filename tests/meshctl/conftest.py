"""Fixtures shared by the meshctl tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from meshctl.lab.kubeapi import KubeApiDouble, KubeApiThread


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


@pytest.fixture
def api() -> Iterator[KubeApiDouble]:
    """A Kubernetes API double on its own thread (the CLI under test is synchronous)."""
    with KubeApiThread() as double:
        yield double


@pytest.fixture
def kubeconfig(api: KubeApiDouble, tmp_path: Path) -> Path:
    """A kubeconfig whose context ``cell-1`` points at ``api``."""
    return api.write_kubeconfig(tmp_path / "kubeconfig", context="cell-1")
