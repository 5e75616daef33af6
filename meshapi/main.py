"""``meshapi`` console script: parse and validate flags, then run `MeshApiApp` until signalled."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from pathlib import Path
from urllib.parse import urlsplit

import click
import structlog

from meshapi.app import ConfigError, MeshApiApp, MeshApiConfig
from meshapi.resync import DEFAULT_LOST_STATE_GRACE, DEFAULT_RESYNC_GRACE
from meshcore.flags import cidr, host_port
from meshcore.logs import configure_logging
from meshcore.model import check_cell_name
from meshcore.model.names import check_dns_label

log = structlog.get_logger("meshapi")


def _etcd_endpoint(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise click.BadParameter(f"{url!r} is not http://HOST:PORT", param_hint="--etcd")
    return f"{parts.hostname}:{parts.port}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cell", required=True, help="Cell name (DNS label, at most 32 characters).")
@click.option("--cell-id", required=True, type=click.IntRange(1, 255), help="Cell id, 1-255.")
@click.option("--pod-cidr", "pod_cidrs", multiple=True, required=True, help="Pod CIDR (repeat).")
@click.option("--node-cidr", "node_cidrs", multiple=True, help="Node address CIDR (repeat).")
@click.option("--etcd", "etcd", multiple=True, required=True, help="etcd URL http://HOST:PORT.")
@click.option("--listen", default="127.0.0.1:7443", show_default=True, help="gRPC HOST:PORT.")
@click.option("--tls-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--http", "http", default="127.0.0.1:7080", show_default=True, help="HTTP HOST:PORT.")
@click.option("--heartbeat-interval", default=5.0, type=click.FloatRange(0.1, 3600))
@click.option("--history-events", default=100_000, type=click.IntRange(1, 10_000_000))
@click.option(
    "--resync-grace",
    default=DEFAULT_RESYNC_GRACE,
    show_default=True,
    type=click.FloatRange(0, 86400),
    help="After an etcd wipe: seconds to wait for every node to register again before the "
    "node/endpoint sync canaries are written anyway.",
)
@click.option(
    "--lost-state-grace",
    default=DEFAULT_LOST_STATE_GRACE,
    show_default=True,
    type=click.FloatRange(0, 7 * 86400),
    help="After an etcd wipe: seconds the agents keep services/peers lost with the store "
    "(reported by `meshctl status`) before their canaries are written and they are deleted.",
)
@click.option(
    "--source",
    default="standalone",
    show_default=True,
    type=click.Choice(["standalone", "kubernetes"]),
    help="Where services, endpoints, nodes and peers come from: admin writes into etcd "
    "(standalone) or a Kubernetes API that meshapi lists and watches (kubernetes).",
)
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="With --source kubernetes: the kubeconfig to use (default: in-cluster service account).",
)
@click.option("--kube-context", help="With --kubeconfig: the context to use (default: current).")
@click.option(
    "--kube-namespace",
    default="cellmesh",
    show_default=True,
    help="With --source kubernetes: the namespace of the cellmesh-peers ConfigMap.",
)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning"]))
def main(
    cell: str,
    cell_id: int,
    pod_cidrs: tuple[str, ...],
    node_cidrs: tuple[str, ...],
    etcd: tuple[str, ...],
    listen: str,
    tls_dir: Path,
    http: str,
    heartbeat_interval: float,
    history_events: int,
    resync_grace: float,
    lost_state_grace: float,
    source: str,
    kubeconfig: Path | None,
    kube_context: str | None,
    kube_namespace: str,
    log_level: str,
) -> None:
    """Serve one cell's records to its agents and its connected peers (gRPC over mTLS)."""
    try:
        check_cell_name(cell)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--cell") from e
    try:
        check_dns_label(kube_namespace)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--kube-namespace") from e
    if source != "kubernetes" and kubeconfig is not None:
        raise click.BadParameter("only with --source kubernetes", param_hint="--kubeconfig")
    if kube_context is not None and kubeconfig is None:
        raise click.BadParameter(
            "needs --kubeconfig (in-cluster mode has no contexts)", param_hint="--kube-context"
        )
    config = MeshApiConfig(
        cell=cell,
        cell_id=cell_id,
        pod_cidrs=tuple(cidr(c, "--pod-cidr") for c in pod_cidrs),
        node_cidrs=tuple(cidr(c, "--node-cidr") for c in node_cidrs),
        etcd_endpoints=tuple(_etcd_endpoint(u) for u in etcd),
        listen=host_port(listen, "--listen"),
        tls_dir=tls_dir,
        http=host_port(http, "--http"),
        heartbeat_interval=heartbeat_interval,
        history_events=history_events,
        resync_grace=resync_grace,
        lost_state_grace=lost_state_grace,
        source=source,
        kubeconfig=kubeconfig,
        kube_context=kube_context,
        kube_namespace=kube_namespace,
    )
    configure_logging(log_level)
    try:
        asyncio.run(_serve(config))
    except (ConfigError, ValueError) as e:
        raise click.ClickException(str(e)) from e


async def _serve(config: MeshApiConfig) -> None:
    app = MeshApiApp(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    freeze = asyncio.create_task(freeze_heap_once_synced(app), name="gc-freeze")
    try:
        await stop.wait()
    finally:
        freeze.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await freeze
        await app.stop()


async def freeze_heap_once_synced(app: MeshApiApp) -> None:
    """Once the initial sync is in (cache listed, every canary written), move what it loaded
    out of the collector's reach: a full collection then no longer walks a cell's records
    (a 150 ms pause at 7,000 endpoints, the p99 of a change; docs/benchmarks.md)."""
    while True:
        try:
            await app.wait_ready(timeout=60)
            break
        except TimeoutError:
            continue  # the store or the cluster is not there yet: keep waiting
    gc.collect()
    gc.freeze()
    log.info("Heap frozen after the initial sync", objects=gc.get_freeze_count())
