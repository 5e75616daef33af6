"""Record builders and a running ListWatcher for the meshapi tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

from meshcore.client import MeshClient
from meshcore.model import Endpoint, EndpointPort, Kind, Peer, Service
from meshcore.model.records import Affinity, Frontend
from meshcore.watch import Change, ListWatcher


def endpoint(
    cell: str, n: int, *, service: str = "echo", node: str = "n1", port: int = 8080
) -> Endpoint:
    base = {"alpha": "10.1", "beta": "10.2", "gamma": "10.3"}[cell]
    return Endpoint(
        cell=cell,
        namespace="demo",
        service=service,
        address=ip_address(f"{base}.{n // 250}.{n % 250 + 1}"),
        node=node,
        ports=[EndpointPort(name="http", port=port)],
    )


def service(
    cell: str,
    name: str = "echo",
    *,
    global_: bool = True,
    shared: bool = True,
    vip: str = "10.96.0.10",
) -> Service:
    return Service.model_validate(
        {
            "cell": cell,
            "namespace": "demo",
            "name": name,
            "frontends": [Frontend(name="http", vip=ip_address(vip), port=80)],
            "global": global_,
            "shared": shared,
            "affinity": Affinity.NONE,
        }
    )


def peer(cell: str, name: str, *, id_: int, address: str = "127.0.0.1:1") -> Peer:
    return Peer(cell=cell, name=name, id=id_, address=address)


@dataclass
class RunningWatcher:
    watcher: ListWatcher
    changes: list[Change] = field(default_factory=list)

    def keys(self, kind: Kind) -> set[str]:
        return {k for k in self.watcher.records if k.split("/")[2] == kind}


@contextlib.asynccontextmanager
async def running_watcher(
    address: str, tls_dir: Path, kinds: Iterable[Kind] = (), *, backoff: tuple[float, ...] = (0.05,)
) -> AsyncIterator[RunningWatcher]:
    client = MeshClient(address, tls_dir)
    rw = RunningWatcher(ListWatcher(client, kinds=kinds, backoff=backoff))
    rw.watcher._on_change = rw.changes.append
    task = asyncio.create_task(rw.watcher.run())
    try:
        yield rw
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()
