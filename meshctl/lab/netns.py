"""The lab's host objects: network namespaces, veths, bridges, cgroup v2 directories, bpffs pins.

Everything goes through iproute2 (``ip``), always with ``-n <lab namespace>``: every link is
created inside a lab namespace (``ip -n A link add X type veth peer name Y netns B``), so the
host's root namespace never holds a lab link, address or route, not even for a moment. Removal
is idempotent: a namespace, cgroup or pin that is already gone is not an error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

from bpf.loader import BPFFS, SockLbLoader
from meshctl.lab.topology import NODE_UPLINK, POD_BRIDGE, POD_LINK, UNDERLAY_BRIDGE

__all__ = [
    "CGROUP_ROOT",
    "NETNS_DIR",
    "PIN_ROOT",
    "NetError",
    "add_netns",
    "add_node",
    "add_pod",
    "add_underlay",
    "cgroup_pids",
    "delete_netns",
    "ip",
    "list_cgroups",
    "list_netns",
    "list_pins",
    "make_cgroup",
    "netns_exists",
    "netns_pids",
    "remove_cgroup",
    "remove_pin",
]

CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
NETNS_DIR = Path("/var/run/netns")
PIN_ROOT = BPFFS / "cellmesh"


class NetError(RuntimeError):
    """An ``ip`` command, a cgroup or a pin operation failed; the message names it."""


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise NetError(f"ip {' '.join(args)}: {done.stderr.strip() or 'failed'}")
    return done.stdout


def _in(netns: str, *args: str) -> str:
    return ip("-n", netns, *args)


def _sysctl(netns: str, setting: str) -> None:
    argv = ["ip", "netns", "exec", netns, "sysctl", "-q", "-w", setting]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise NetError(f"{' '.join(argv)}: {done.stderr.strip() or 'failed'}")


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def add_netns(name: str) -> None:
    ip("netns", "add", name)
    _in(name, "link", "set", "lo", "up")


def add_underlay(netns: str) -> None:
    """The namespace holding the bridge every node's uplink is a port of."""
    add_netns(netns)
    _in(netns, "link", "add", UNDERLAY_BRIDGE, "type", "bridge")
    _in(netns, "link", "set", UNDERLAY_BRIDGE, "up")


def add_node(*, netns: str, underlay: str, underlay_veth: str, address: str, gateway: str) -> None:
    """A node namespace: uplink to the underlay bridge, a pod bridge with the gateway, forwarding.

    ``address`` (``192.168.1.10/16``) and ``gateway`` (``10.1.1.1/24``) carry their prefix
    lengths. No default route: a node reaches other nodes on the underlay /16 and other nodes'
    pods only through the routes its agent programs.
    """
    add_netns(netns)
    _in(
        netns, "link", "add", NODE_UPLINK, "type", "veth",
        "peer", "name", underlay_veth, "netns", underlay,
    )  # fmt: skip
    _in(underlay, "link", "set", underlay_veth, "master", UNDERLAY_BRIDGE, "up")
    _in(netns, "addr", "add", address, "dev", NODE_UPLINK)
    _in(netns, "link", "set", NODE_UPLINK, "up")
    # A bridge without a MAC of its own takes the lowest of its ports' and changes it whenever
    # a pod's veth comes or goes; the pods' neighbour entries for the gateway would then point
    # at a MAC nobody answers to, and their traffic would vanish until the entries expire.
    _in(netns, "link", "add", POD_BRIDGE, "address", mac_for(gateway), "type", "bridge")
    _in(netns, "addr", "add", gateway, "dev", POD_BRIDGE)
    _in(netns, "link", "set", POD_BRIDGE, "up")
    _sysctl(netns, "net.ipv4.ip_forward=1")


def mac_for(address: str) -> str:
    """A locally administered unicast MAC from an IPv4 address (``10.1.1.10/24`` or bare)."""
    octets = [int(x) for x in address.split("/", 1)[0].split(".")]
    return "02:00:" + ":".join(f"{o:02x}" for o in octets)


def add_pod(*, node_netns: str, gateway: str, netns: str, veth: str, address: str) -> None:
    """A pod namespace behind a veth to its node's pod bridge, default route via the node.

    ``address`` carries its prefix length (``10.1.1.10/24``); ``gateway`` is the node's.
    """
    add_netns(netns)
    _in(node_netns, "link", "add", veth, "type", "veth", "peer", "name", POD_LINK, "netns", netns)
    _in(node_netns, "link", "set", veth, "master", POD_BRIDGE, "up")
    # The MAC follows from the address: a pod re-created at an address keeps its MAC, so the
    # neighbour entries other pods and the node still hold for it stay right (a random MAC
    # would leave them pointing at the deleted veth until they expire, several seconds).
    _in(netns, "link", "set", POD_LINK, "address", mac_for(address))
    _in(netns, "addr", "add", address, "dev", POD_LINK)
    _in(netns, "link", "set", POD_LINK, "up")
    _in(netns, "route", "add", "default", "via", gateway)


def delete_link(netns: str, link: str) -> None:
    """Delete a link inside a namespace (a veth takes its peer along); a missing one is fine."""
    if not netns_exists(netns):
        return
    done = subprocess.run(
        ["ip", "-n", netns, "link", "del", link], capture_output=True, text=True, timeout=20
    )
    if done.returncode != 0 and "Cannot find device" not in done.stderr:
        raise NetError(f"ip -n {netns} link del {link}: {done.stderr.strip() or 'failed'}")


def delete_netns(name: str) -> None:
    """Delete a namespace (its veths go with it); a missing one is fine."""
    if not netns_exists(name):
        return
    try:
        ip("netns", "del", name)
    except NetError:
        if netns_exists(name):
            raise


def netns_pids(name: str) -> list[int]:
    """The processes living in a namespace (``ip netns pids``)."""
    if not netns_exists(name):
        return []
    try:
        out = ip("netns", "pids", name)
    except NetError:
        return []
    return [int(pid) for pid in out.split() if pid.isdigit()]


# --- cgroups ---------------------------------------------------------------------------------


def list_cgroups() -> list[str]:
    try:
        return sorted(p.name for p in CGROUP_ROOT.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def make_cgroup(name: str) -> Path:
    if not (CGROUP_ROOT / "cgroup.procs").exists():
        raise NetError(f"no cgroup v2 hierarchy at {CGROUP_ROOT}")
    path = CGROUP_ROOT / name
    path.mkdir(exist_ok=True)
    return path


def cgroup_pids(name: str) -> list[int]:
    try:
        text = (CGROUP_ROOT / name / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(pid) for pid in text.split()]


def remove_cgroup(name: str) -> None:
    """rmdir the cgroup; its processes must be gone (EBUSY otherwise). Missing is fine."""
    path = CGROUP_ROOT / name
    try:
        path.rmdir()
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise NetError(f"cgroup {path} still has processes: {cgroup_pids(name)}") from e
        raise NetError(f"cannot remove cgroup {path}: {e.strerror}") from e


# --- bpffs pins ------------------------------------------------------------------------------


def list_pins() -> list[str]:
    try:
        return sorted(p.name for p in PIN_ROOT.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def remove_pin(instance: str) -> None:
    """Detach the agent's links (remove their pins), then remove the maps and the directory."""
    loader = SockLbLoader(object_path=Path(os.devnull), instance=instance)
    if not loader.root.exists():
        return
    try:
        loader.unpin()
    except OSError as e:
        raise NetError(f"cannot remove pins {loader.root}: {e}") from e
    with contextlib.suppress(OSError):
        PIN_ROOT.rmdir()  # only when empty
