"""The lab's names and addresses, computed from its flags: pure, no IO.

Cell c (1-based) is the c-th Greek letter, pod CIDR 10.c.0.0/16, node CIDR 192.168.c.0/24.
Node n (0-based) is ``node<n>``: pod CIDR 10.c.(n+1).0/24, gateway .1, underlay address
192.168.c.(10+n) (a /16 on the underlay bridge, so every node is on-link with every other).
Pod p of node n is ``echo-<n>-<p>`` at 10.c.(n+1).(10+p). Every host object a lab makes carries
the lab's name in a prefix (``cml-<lab>-`` namespaces, ``cellmesh-lab-<lab>-`` cgroups,
``<lab>-`` pin instances) followed by a suffix of a fixed grammar, so ``down`` can find them
without its state file and never mistakes another lab's objects (``lab`` vs ``lab-alpha``) for
its own: see `owns_netns`, `owns_cgroup`, `owns_pin`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from meshcore.model.names import check_dns_label

__all__ = [
    "CELL_NAMES",
    "MAX_CELLS",
    "MAX_NODES",
    "MAX_PODS",
    "CellPlan",
    "LabPlan",
    "NodePlan",
    "PodPlan",
    "TopologyError",
    "cell_plan",
    "check_lab_name",
    "check_pod_name",
    "next_pod_host",
    "node_plan",
    "owns_cgroup",
    "owns_netns",
    "owns_pin",
    "plan_lab",
    "pod_netns",
    "pod_veth",
]

CELL_NAMES = (
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon",
)  # fmt: skip
MAX_CELLS = len(CELL_NAMES)
MAX_NODES = 20
MAX_PODS = 50
MAX_LAB_NAME = 16

NETNS_PREFIX = "cml-"
CGROUP_PREFIX = "cellmesh-lab-"
UNDERLAY_BRIDGE = "br-ul"
POD_BRIDGE = "br-pods"
NODE_UPLINK = "eth0"  # in a node namespace: its end of the underlay veth
POD_LINK = "eth0"  # in a pod namespace: its end of the veth to the node's pod bridge
DEMO_SERVICE = ("demo", "echo")
ECHO_PORT = 8080

_CELLS = "|".join(CELL_NAMES)
_NODE = r"node\d{1,2}"


class TopologyError(ValueError):
    """A lab name, size or pod name is out of range; the message says which and why."""


def check_lab_name(name: str) -> str:
    try:
        check_dns_label(name)
    except ValueError:
        ok = False
    else:
        ok = len(name) <= MAX_LAB_NAME
    if not ok:
        raise TopologyError(
            f"lab name {name!r} is not a DNS label of at most {MAX_LAB_NAME} characters "
            "(lowercase letters, digits and '-', starting and ending with a letter or digit)"
        )
    return name


def check_pod_name(name: str) -> str:
    try:
        return check_dns_label(name)
    except ValueError:
        raise TopologyError(
            f"pod name {name!r} is not a DNS label (lowercase letters, digits and '-')"
        ) from None


@dataclass(frozen=True)
class PodPlan:
    cell: str
    node: str
    name: str
    address: IPv4Address
    netns: str
    veth: str  # the node side of the pod's veth (the pod side is always eth0)


@dataclass(frozen=True)
class NodePlan:
    cell: str
    cell_id: int
    index: int
    name: str
    netns: str
    address: IPv4Address  # on the underlay, /16
    pod_cidr: IPv4Network
    gateway: IPv4Address  # the node's pod bridge address, /24
    cgroup_name: str  # directory under the cgroup v2 root
    pin_instance: str  # directory under <bpffs>/cellmesh
    underlay_veth: str  # the underlay side of the node's uplink

    def pod_address(self, host: int) -> IPv4Address:
        return self.pod_cidr.network_address + host


@dataclass(frozen=True)
class CellPlan:
    name: str
    id: int
    pod_cidr: IPv4Network
    node_cidr: IPv4Network


@dataclass(frozen=True)
class LabPlan:
    name: str
    underlay_netns: str
    cells: tuple[CellPlan, ...]
    nodes: tuple[NodePlan, ...]
    pods: tuple[PodPlan, ...]

    def context(self, cell: str) -> str:
        return f"{self.name}-{cell}"


def cell_plan(cell_id: int) -> CellPlan:
    return CellPlan(
        name=CELL_NAMES[cell_id - 1],
        id=cell_id,
        pod_cidr=IPv4Network(f"10.{cell_id}.0.0/16"),
        node_cidr=IPv4Network(f"192.168.{cell_id}.0/24"),
    )


def node_plan(lab: str, cell: CellPlan, index: int) -> NodePlan:
    name = f"node{index}"
    pod_cidr = IPv4Network(f"10.{cell.id}.{index + 1}.0/24")
    return NodePlan(
        cell=cell.name,
        cell_id=cell.id,
        index=index,
        name=name,
        netns=f"{NETNS_PREFIX}{lab}-{cell.name}-{name}",
        address=IPv4Address(f"192.168.{cell.id}.{10 + index}"),
        pod_cidr=pod_cidr,
        gateway=pod_cidr.network_address + 1,
        cgroup_name=f"{CGROUP_PREFIX}{lab}-{cell.name}-{name}",
        pin_instance=f"{lab}-{cell.name}-{name}",
        underlay_veth=f"{cell.name}-{name}",  # <= 7 + 1 + 6 = 14 characters
    )


def pod_netns(node_netns: str, host: int) -> str:
    """A pod's namespace is named after its address's last octet (names may be anything)."""
    return f"{node_netns}-{host}"


def pod_veth(host: int) -> str:
    return f"veth{host}"


def plan_lab(name: str, *, cells: int, nodes: int, pods_per_node: int) -> LabPlan:
    check_lab_name(name)
    for what, value, low, high in (
        ("cells", cells, 1, MAX_CELLS),
        ("nodes", nodes, 1, MAX_NODES),
        ("pods per node", pods_per_node, 0, MAX_PODS),
    ):
        if not low <= value <= high:
            raise TopologyError(f"{what} must be {low}..{high}, not {value}")
    cell_plans = tuple(cell_plan(c) for c in range(1, cells + 1))
    node_plans = tuple(node_plan(name, cell, n) for cell in cell_plans for n in range(nodes))
    pod_plans = tuple(
        PodPlan(
            cell=node.cell,
            node=node.name,
            name=f"echo-{node.index}-{p}",
            address=node.pod_address(10 + p),
            netns=pod_netns(node.netns, 10 + p),
            veth=pod_veth(10 + p),
        )
        for node in node_plans
        for p in range(pods_per_node)
    )
    return LabPlan(
        name=name,
        underlay_netns=f"{NETNS_PREFIX}{name}-ul",
        cells=cell_plans,
        nodes=node_plans,
        pods=pod_plans,
    )


def next_pod_host(used: set[int]) -> int:
    """The lowest free host number of a node's /24 (10 and up first; .1 is the gateway)."""
    for host in itertools.chain(range(10, 255), range(2, 10)):
        if host not in used:
            return host
    raise TopologyError("the node's pod CIDR is full (253 pods)")


# --- recognizing a lab's objects without its state file --------------------------------------


def owns_netns(lab: str, name: str) -> bool:
    pattern = rf"{NETNS_PREFIX}{re.escape(lab)}-(ul|({_CELLS})-{_NODE}(-\d{{1,3}})?)"
    return re.fullmatch(pattern, name) is not None


def owns_cgroup(lab: str, name: str) -> bool:
    return re.fullmatch(rf"{CGROUP_PREFIX}{re.escape(lab)}-({_CELLS})-{_NODE}", name) is not None


def owns_pin(lab: str, name: str) -> bool:
    return re.fullmatch(rf"{re.escape(lab)}-({_CELLS})-{_NODE}", name) is not None
