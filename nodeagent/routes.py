"""Route programmer: the node agent's routes to remote pod CIDRs, via rtnetlink (pyroute2).

The agent computes ``desired`` (pod CIDR -> remote node address) from node records and hands it
to ``RouteTable.sync``, which makes the routes *this agent owns* in the main table of the node's
network namespace equal to it. Ownership is the rtnetlink protocol number: routes with another
protocol (kernel, boot, static, other daemons) are never replaced or deleted. This is the only
nodeagent module that imports pyroute2; it holds no merging logic.

Calls block (async callers use ``asyncio.to_thread``) and may come from any thread: pyroute2 0.9
keeps a socket and an event loop *per calling thread*, so every netlink call runs on the table's
own single worker thread, which also serializes them. That thread joins the node's namespace
itself (``setns(CLONE_NEWNET)`` affects only the calling thread) and then opens a plain
``IPRoute()``: pyroute2's own ``netns=`` forks a helper, and a fork in a process with live gRPC
threads dies in gRPC's fork handler.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import TracebackType
from typing import Protocol, Self, TypeVar, cast

import structlog
from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

log = structlog.get_logger("nodeagent.routes")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_thread_netns = threading.local()  # the namespace the current worker thread has joined


def _join_netns(name: str) -> None:
    """Move the calling thread (only it) into the named network namespace."""
    if getattr(_thread_netns, "name", None) == name:
        return
    if getattr(_thread_netns, "name", None) is not None:
        # A worker thread serves one namespace for its life; never reuse it for another.
        raise RouteError(f"netns {name}", errno.EINVAL, "worker thread bound to another netns")
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise RouteError(f"netns {name}", err, os.strerror(err))
    finally:
        os.close(fd)
    _thread_netns.name = name


T = TypeVar("T")

RT_TABLE_MAIN = 254
NETNS_DIR = "/var/run/netns"  # where `ip netns add` (and pyroute2) keep named namespaces
# The agent's ownership tag (rtnetlink route protocol). 212 is not assigned in the kernel's or
# iproute2's rt_protos (186-192 are BGP/IS-IS/OSPF/RIP/EIGRP), so no routing daemon's routes
# carry it; `ip route show proto 212` lists exactly the agent's routes.
DEFAULT_PROTOCOL = 212


@dataclass(frozen=True)
class RouteSpec:
    """One route: ``destination`` via ``gateway``."""

    destination: IPv4Network
    gateway: IPv4Address

    def __str__(self) -> str:
        return f"{self.destination} via {self.gateway}"


class RouteError(RuntimeError):
    """A netlink request failed; the message names the route (or namespace) and the error."""

    def __init__(self, subject: str, code: int | None, reason: str) -> None:
        name = errno.errorcode.get(code, str(code)) if code is not None else None
        super().__init__(f"{subject}: {reason}" + (f" ({name})" if name else ""))
        self.subject = subject
        self.errno = code


@dataclass(frozen=True)
class SyncResult:
    """What one ``sync`` changed; ``errors`` maps each failed destination to its message."""

    added: tuple[IPv4Network, ...] = ()
    replaced: tuple[IPv4Network, ...] = ()
    deleted: tuple[IPv4Network, ...] = ()
    errors: dict[IPv4Network, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced or self.deleted)


class _RouteMessage(Protocol):
    """The part of a pyroute2 rtmsg we read."""

    def get(self, key: str) -> object: ...


class _Netlink(Protocol):
    """The part of pyroute2's synchronous ``IPRoute`` we use."""

    def route(self, command: str, **spec: object) -> Iterable[_RouteMessage]: ...

    def close(self) -> None: ...


class RouteTable:
    """The agent's routes (tagged with ``protocol``) in the main table of namespace ``netns``.

    ``netns`` names a namespace under /var/run/netns (as made by ``ip netns add``); None is the
    calling process's own namespace. The worker thread and its netlink socket start on first
    use and are reused; ``close`` releases both (a later call starts them again).
    """

    def __init__(self, *, netns: str | None, protocol: int = DEFAULT_PROTOCOL) -> None:
        if not 0 < protocol < 256 or protocol in (1, 2, 3, 4):
            raise ValueError(f"protocol {protocol}: not a free rtnetlink protocol number")
        self.netns = netns
        self.protocol = protocol
        self._ipr: _Netlink | None = None  # used only on the worker thread
        self._worker: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RouteTable(netns={self.netns!r}, protocol={self.protocol})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        # Under the lock, so no call can start a new worker while the old one still has the handle.
        with self._lock:
            if self._worker is not None:
                self._worker.submit(self._drop).result()
                self._worker.shutdown()
                self._worker = None

    def list(self) -> dict[IPv4Network, IPv4Address]:
        """Our routes in the main table, destination -> gateway (gateway-less ones omitted)."""
        current = self._on_worker(self._dump)
        return {dst: gw for dst, gw in current.items() if gw is not None}

    def sync(self, desired: Mapping[IPv4Network, IPv4Address]) -> SyncResult:
        """Make our routes equal ``desired``; per-route failures are collected, not raised.

        A missing route is created with ``add`` (create-exclusive), so a route of another
        protocol at the same destination is reported as an error rather than overwritten; one
        of ours that differs is changed with ``replace``. Raises ``RouteError`` only when the
        namespace cannot be read or the netlink socket fails.
        """
        return self._on_worker(lambda: self._sync(dict(desired)))

    def _on_worker(self, call: Callable[[], T]) -> T:
        with self._lock:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"routes-{self.netns}")
            worker = self._worker
        return worker.submit(call).result()

    # Everything below runs on the worker thread.

    def _sync(self, desired: dict[IPv4Network, IPv4Address]) -> SyncResult:
        current = self._dump()
        added: list[IPv4Network] = []
        replaced: list[IPv4Network] = []
        deleted: list[IPv4Network] = []
        errors: dict[IPv4Network, str] = {}
        for dst in sorted(desired):
            route = RouteSpec(dst, desired[dst])
            if dst in current and current[dst] == route.gateway:
                continue
            command = "replace" if dst in current else "add"
            try:
                self._request(command, dst, gateway=str(route.gateway))
            except NetlinkError as e:
                errors[dst] = str(_route_error(str(route), e))
                log.warning("Route not programmed", netns=self.netns, error=errors[dst])
                continue
            (replaced if command == "replace" else added).append(dst)
            log.info("Route programmed", netns=self.netns, route=str(route), command=command)
        for dst in sorted(current.keys() - desired.keys()):
            try:
                self._request("del", dst)
            except NetlinkError as e:
                if e.code == errno.ESRCH:  # already gone: that is what we wanted
                    continue
                errors[dst] = str(_route_error(f"{dst} delete", e))
                log.warning("Route not deleted", netns=self.netns, error=errors[dst])
                continue
            deleted.append(dst)
            log.info("Route deleted", netns=self.netns, destination=str(dst))
        return SyncResult(tuple(added), tuple(replaced), tuple(deleted), errors)

    def _request(self, command: str, dst: IPv4Network, **extra: object) -> None:
        """One route request in the main table, tagged with our protocol.

        ``NetlinkError`` (the kernel refused this route) passes through; a socket failure drops
        the handle, so the next call opens a new one, and becomes ``RouteError``.
        """
        ipr = self._handle()
        spec = {"family": socket.AF_INET, "table": RT_TABLE_MAIN, "proto": self.protocol}
        try:
            ipr.route(command, dst=str(dst), **spec, **extra)
        except OSError as e:
            self._drop()
            raise RouteError(
                f"netns {self.netns} {dst} {command}", e.errno, e.strerror or str(e)
            ) from e

    def _dump(self) -> dict[IPv4Network, IPv4Address | None]:
        """Our IPv4 routes in the main table; None for one without a single gateway."""
        ipr = self._handle()
        try:
            msgs = tuple(
                ipr.route("dump", family=socket.AF_INET, table=RT_TABLE_MAIN, proto=self.protocol)
            )
        except NetlinkError as e:
            raise _route_error(f"netns {self.netns} route dump", e) from e
        except OSError as e:
            self._drop()
            raise RouteError(f"netns {self.netns} route dump", e.errno, e.strerror or str(e)) from e
        routes: dict[IPv4Network, IPv4Address | None] = {}
        for msg in msgs:
            # Keep only ours even if a pyroute2 version ignored the dump filter.
            if msg.get("proto") != self.protocol or msg.get("table") != RT_TABLE_MAIN:
                continue
            dst = IPv4Network(f"{msg.get('dst') or '0.0.0.0'}/{msg.get('dst_len')}")
            gateway = msg.get("gateway")
            routes[dst] = IPv4Address(gateway) if isinstance(gateway, str) else None
        return routes

    def _handle(self) -> _Netlink:
        if self._ipr is None:
            # pyroute2 0.9.7 leaks the event loop of an IPRoute whose namespace cannot be
            # opened, so a missing namespace (the usual failure) is caught before that.
            if self.netns is not None and not os.path.exists(os.path.join(NETNS_DIR, self.netns)):
                enoent = errno.ENOENT
                raise RouteError(f"netns {self.netns}", enoent, os.strerror(enoent))
            try:
                if self.netns is not None:
                    _join_netns(self.netns)
                # groups=0: no multicast subscriptions, so no events pile up unread.
                ipr = IPRoute(groups=0)
            except OSError as e:
                raise RouteError(f"netns {self.netns}", e.errno, e.strerror or str(e)) from e
            self._ipr = cast(_Netlink, ipr)
        return self._ipr

    def _drop(self) -> None:
        ipr, self._ipr = self._ipr, None
        if ipr is not None:
            with contextlib.suppress(OSError):  # an already broken socket
                ipr.close()


def _route_error(subject: str, e: NetlinkError) -> RouteError:
    code = e.code if isinstance(e.code, int) else None
    return RouteError(subject, code, os.strerror(code) if code is not None else str(e))
