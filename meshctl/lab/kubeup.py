"""The Kubernetes steps of ``lab up --source kubernetes``: API doubles, kubeconfigs, objects.

Flow (called by ``up.build`` between etcd and meshapi): `start_doubles` runs one API double per
cell (``python -m meshctl.lab.kubeapi``, a lab process like etcd: argv recorded, stopped by pid,
found by ``down`` through its ``--kubeconfig`` argument inside the lab's directory) and waits
until it serves ``/version``; `write_kubeconfigs` writes the cell's own kubeconfig (meshapi's
``--kubeconfig``) and the lab's combined one (``<state dir>/kubeconfig``, a context per cell
named like its meshctl context); `seed` server-side applies ``kubeseed.cell_objects`` through
the real client (`meshctl.kube.client.KubeClient`) and the meshapi Service's load balancer
status; `link_admin` puts meshctl's admin certificate where ``--kube-context`` looks for it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Collection
from pathlib import Path

import yaml

from meshctl.kube.access import admin_tls_dir
from meshctl.kube.client import KubeClient, KubeError
from meshctl.lab import procs
from meshctl.lab.kubeseed import (
    FIELD_MANAGER,
    cell_objects,
    combined_kubeconfig,
    kubeconfig_document,
    meshapi_service_status,
)
from meshctl.lab.state import CellState, LabState, ProcessState, state_dir

__all__ = [
    "KUBEAPI_MODULE",
    "KubeSeedError",
    "kubeapi_argv",
    "link_admin",
    "plan_cell",
    "seed",
    "start_doubles",
    "unlink_admin",
    "write_kubeconfigs",
]

KUBEAPI_MODULE = "meshctl.lab.kubeapi"


class KubeSeedError(RuntimeError):
    """The lab could not write its objects into a cell's API double; the message says which."""


def plan_cell(state: LabState, cell: CellState, kubeapi: str) -> None:
    """Name the cell's API double address, kubeconfig and admin link in the state."""
    directory = state_dir(state.name)
    cell.kubeapi = kubeapi
    cell.kubeconfig = str(directory / "kube" / f"{cell.name}.kubeconfig")
    cell.kube_admin = str(admin_tls_dir(Path(state.config_path), cell.context))


def kubeapi_argv(state: LabState, cell: CellState) -> list[str]:
    """The double's command line; its ``--kubeconfig`` (the double's own, unused by the lab)
    names a path inside the lab's directory, which is how ``down`` finds it without a state."""
    assert cell.kubeapi is not None
    own = state_dir(state.name) / "kube" / f"{cell.name}-double.kubeconfig"
    return [
        sys.executable,
        "-m",
        KUBEAPI_MODULE,
        "--listen",
        cell.kubeapi,
        "--kubeconfig",
        str(own),
    ]


def start_doubles(state: LabState, *, logs: Path, timeout: float) -> None:
    """Start every cell's API double (recorded as it runs) and wait until each serves."""
    for cell in state.cells:
        argv = kubeapi_argv(state, cell)
        log = logs / f"{cell.name}-kubeapi.log"
        pid, starttime = procs.spawn(argv, log=log)
        cell.kubeapi_process = ProcessState(argv=argv, log=str(log), pid=pid, starttime=starttime)
    targets = []
    for cell in state.cells:
        process = cell.kubeapi_process
        assert process is not None
        assert cell.kubeapi is not None
        targets.append(
            procs.ServeTarget(
                f"kubeapi of {cell.name}",
                cell.kubeapi,
                _liveness(process),
                Path(process.log),
            )
        )
    procs.wait_serving(targets, path="/version", timeout=timeout, what="serving")


def _liveness(process: ProcessState) -> procs.ProcessCheck:
    return lambda: procs.alive(process.pid, process.starttime)


def _write_yaml(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(document, f, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_kubeconfigs(state: LabState) -> None:
    for cell in state.cells:
        assert cell.kubeconfig is not None
        _write_yaml(Path(cell.kubeconfig), kubeconfig_document([cell], current=cell.context))
    assert state.kubeconfig is not None
    _write_yaml(Path(state.kubeconfig), combined_kubeconfig(state))


def seed(state: LabState, *, cells: Collection[str] | None = None) -> int:
    """Apply every cell's objects (or those of ``cells``); returns how many. Raises
    `KubeSeedError` naming the cell and the object."""
    assert state.kubeconfig is not None
    applied = 0
    for cell in state.cells:
        if cells is not None and cell.name not in cells:
            continue
        try:
            with KubeClient.from_context(cell.context, kubeconfig=Path(state.kubeconfig)) as api:
                for obj in cell_objects(state, cell):
                    stored = api.apply(obj, field_manager=FIELD_MANAGER)
                    have = stored.get("status") or {}
                    if any(have.get(k) != v for k, v in obj.get("status", {}).items()):
                        # A kind with a status subresource ignores status in the main apply.
                        api.apply_status(
                            {k: obj[k] for k in ("apiVersion", "kind", "metadata", "status")},
                            field_manager=FIELD_MANAGER,
                        )
                    applied += 1
                api.apply_status(
                    meshapi_service_status(state.name, cell), field_manager=FIELD_MANAGER
                )
        except KubeError as e:
            raise KubeSeedError(f"cell {cell.name}: {e}") from e
    return applied


def link_admin(state: LabState) -> None:
    """``<config dir>/kube/<context>/admin`` -> the cell's admin TLS directory (a symlink)."""
    for cell in state.cells:
        assert cell.kube_admin is not None
        link = Path(cell.kube_admin)
        link.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if link.is_symlink() or link.exists():
            if not _ours(link, state_dir(state.name)):
                raise KubeSeedError(
                    f"{link} exists and is not this lab's: remove it, or use another lab name"
                )
            link.unlink()
        link.symlink_to(cell.admin_tls, target_is_directory=True)


def _ours(link: Path, directory: Path) -> bool:
    return link.is_symlink() and Path(os.readlink(link)).is_relative_to(directory)


def unlink_admin(link: Path, directory: Path) -> bool:
    """Remove the admin link if it points into the lab's directory, and its parent if empty."""
    if not _ours(link, directory):
        return False
    link.unlink()
    with contextlib.suppress(OSError):  # not empty: something else lives there
        link.parent.rmdir()
    return True
