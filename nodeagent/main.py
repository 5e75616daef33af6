"""``nodeagent`` console script: parse and validate flags, then run `AgentApp` until signalled.

Two registrations (`--registration`): ``standalone`` (the agent writes its node record from
`--node-address`/`--pod-cidr` and its endpoints from `--workloads`) and ``kubernetes`` (in a
cluster: meshapi's Kubernetes source writes them; the agent waits for its Node record, and may
attach to the cgroup2 root the DaemonSet mounts). The node name is `--node` or, from the
downward API, the variable named by `--node-name-from-env`.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import click

from bpf.layout import LB_MAP_MAX_DEFAULT, LB_MAP_MAX_MIN, MapSizes
from bpf.loader import pin_root
from meshcore.flags import cidr, host_port, ip
from meshcore.logs import configure_logging
from meshcore.model import check_cell_name, check_dns_subdomain
from nodeagent.agent import AgentConfig
from nodeagent.app import OBJECT_PATH, AgentApp, DatapathConfig
from nodeagent.ownnode import NodeNameError, Registration, node_name_from_env
from nodeagent.registration import Registrar
from nodeagent.routes import RouteTable

CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


def _cell(_: click.Context, __: click.Parameter, value: str) -> str:
    try:
        check_cell_name(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cell", required=True, callback=_cell, help="This node's cell.")
@click.option("--node", default=None, help="This node's name (or --node-name-from-env).")
@click.option(
    "--node-name-from-env",
    "node_env",
    metavar="VAR",
    default=None,
    help="Take the node name from environment variable VAR (in a DaemonSet: the downward "
    "API's spec.nodeName).",
)
@click.option(
    "--registration",
    type=click.Choice([r.value for r in Registration]),
    default=Registration.STANDALONE.value,
    show_default=True,
    help="standalone: the agent writes its node and endpoints from its flags; kubernetes: "
    "meshapi's Kubernetes source does, the agent waits for its Node record.",
)
@click.option("--meshapi", required=True, help="The own cell's meshapi, HOST:PORT.")
@click.option("--meshapi-server-name", default=None, help="TLS server name of the own meshapi.")
@click.option(
    "--tls-dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path)
)
@click.option(
    "--cgroup",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="cgroup v2 directory the socket LB attaches to (the root cgroup only with "
    "--registration kubernetes: the host's cgroup2 root the DaemonSet mounts).",
)
@click.option(
    "--pin-dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="bpffs directory for this agent's pins.  [default: /sys/fs/bpf/cellmesh/NODE]",
)
@click.option("--http", default="127.0.0.1:9090", show_default=True, help="HTTP HOST:PORT.")
@click.option(
    "--netns",
    default=None,
    help="Network namespace for routes (ip netns name). Without it: no routes, except with "
    "--registration kubernetes: routes in the agent's own namespace (hostNetwork: the host's).",
)
@click.option(
    "--stale-ttl",
    type=click.FloatRange(min=1),
    default=None,
    help="Revoke a peer stale for this many seconds (default: never).",
)
@click.option("--sync-timeout", type=click.FloatRange(min=0), default=60.0, show_default=True)
@click.option(
    "--heartbeat-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True
)
@click.option("--node-address", "node_addresses", multiple=True, help="Node address (repeat).")
@click.option("--pod-cidr", "pod_cidrs", multiple=True, help="This node's pod CIDR (repeat).")
@click.option(
    "--workloads",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML/JSON file listing this node's endpoints (standalone registration).",
)
@click.option(
    "--bpf-object",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=str(OBJECT_PATH),
    show_default=True,
)
@click.option(
    "--bpf-lb-map-max",
    type=click.IntRange(min=LB_MAP_MAX_MIN, max=1 << 24),
    default=LB_MAP_MAX_DEFAULT,
    show_default=True,
    help="Entries of the LB services and backends maps (reverse NAT: at most 65536). A "
    "service takes 1 + its backends entries. Changing it needs the pins removed first.",
)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning"]))
def main(
    cell: str,
    node: str | None,
    node_env: str | None,
    registration: str,
    meshapi: str,
    meshapi_server_name: str | None,
    tls_dir: Path,
    cgroup: Path,
    pin_dir: Path | None,
    http: str,
    netns: str | None,
    stale_ttl: float | None,
    sync_timeout: float,
    heartbeat_timeout: float,
    node_addresses: tuple[str, ...],
    pod_cidrs: tuple[str, ...],
    workloads: Path | None,
    bpf_object: Path,
    bpf_lb_map_max: int,
    log_level: str,
) -> None:
    """Node agent: watch every connected cell, merge global services, program the datapath."""
    node = _node_name(node, node_env)
    in_cluster = Registration(registration) is Registration.KUBERNETES
    host_port(meshapi, "--meshapi")
    host_port(http, "--http")
    if cgroup.resolve() in CGROUP_ROOTS and not in_cluster:
        raise click.BadParameter(
            "refusing the root cgroup: make a directory for the agent (only an in-cluster "
            "agent, --registration kubernetes, attaches to the cgroup2 root)",
            param_hint="--cgroup",
        )
    if in_cluster:
        for flag, given in (
            ("--node-address", node_addresses),
            ("--pod-cidr", pod_cidrs),
            ("--workloads", workloads),
        ):
            if given:
                raise click.BadParameter(
                    "not allowed with --registration kubernetes: the node's addresses, pod "
                    "CIDRs and endpoints come from the cluster's Node and EndpointSlice objects",
                    param_hint=flag,
                )
    for value in node_addresses:
        ip(value, "--node-address")
    for value in pod_cidrs:
        cidr(value, "--pod-cidr")
    if pin_dir is None:
        pin_dir = pin_root(node)
    configure_logging(log_level)
    config = AgentConfig(
        cell=cell,
        node=node,
        meshapi=meshapi,
        tls_dir=tls_dir,
        server_name=meshapi_server_name,
        stale_ttl=stale_ttl,
        sync_timeout=sync_timeout,
        heartbeat_timeout=heartbeat_timeout,
    )
    registrar = None
    if node_addresses:
        registrar = Registrar(cell, node, list(node_addresses), list(pod_cidrs), workloads)
    app = AgentApp(
        config,
        http=http,
        registrar=registrar,
        node_from_record=in_cluster,
        datapath=DatapathConfig(
            cgroup=cgroup,
            pin_dir=pin_dir,
            object_path=bpf_object,
            map_sizes=MapSizes.from_lb_map_max(bpf_lb_map_max),
        ),
        routes=RouteTable(netns=netns) if netns or in_cluster else None,
    )
    asyncio.run(_run(app))


def _node_name(node: str | None, var: str | None) -> str:
    """Exactly one of --node and --node-name-from-env; the name a DNS-1123 subdomain."""
    if (node is None) == (var is None):
        raise click.UsageError("give exactly one of --node NAME and --node-name-from-env VAR")
    if var is not None:
        try:
            return node_name_from_env(var, os.environ)
        except NodeNameError as e:
            raise click.BadParameter(str(e), param_hint="--node-name-from-env") from e
    assert node is not None
    try:
        return check_dns_subdomain(node)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--node") from e


async def _run(app: AgentApp) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        await stop.wait()
    finally:
        await app.stop()
