"""meshapi's wipe recovery at scale: the cost of one recovery step (issue 11, review).

Run: ``.venv/bin/python bench/wipe_recovery.py [--services 25000 --per-service 10]``; prints ONE
JSON line. A `WipeRecovery` (meshapi.resync, pure) remembers a cell of --services services with
--per-service endpoints each (Cilium's scale-test shape), nothing present yet, and is stepped as
meshapi steps it (every 0.1 s while recovering). Side by side: the baseline, one pass over the
remembered records (what a step that rescans them costs at the least). A step must cost far less
than that pass: it reads only the per-kind indexes built once by `reset`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any

from harness import bench_main

from meshapi.resync import WipeRecovery
from meshcore.model import Endpoint, Node, Record, Service, kind_of_key
from meshcore.model.records import EndpointPort

STEPS = 20


def remembered(services: int, per: int) -> dict[str, Record]:
    records: dict[str, Record] = {}
    for name in ("b1", "b2"):
        node = Node(cell="beta", name=name, addresses=["192.168.2.1"], pod_cidrs=["10.2.1.0/24"])
        records[node.key()] = node
    for i in range(services):
        vip = str(IPv4Address("10.96.0.0") + i)
        service = Service.model_validate(
            {
                "cell": "beta",
                "namespace": "bench",
                "name": f"s{i}",
                "frontends": [{"name": "http", "vip": vip, "port": 80}],
                "global": True,
                "shared": True,
                "affinity": "none",
            }
        )
        records[service.key()] = service
        for j in range(per):
            endpoint = Endpoint(
                cell="beta",
                namespace="bench",
                service=f"s{i}",
                address=IPv4Address("10.2.0.1") + (i * per + j) % 65000,
                node="b1",
                ports=[EndpointPort(name="http", port=20000 + i % 40000)],
            )
            records[endpoint.key()] = endpoint
    return records


def run(args: argparse.Namespace) -> dict[str, Any]:
    before = remembered(args.services, args.per_service)
    start = time.perf_counter()
    kinds = [kind_of_key(key) for key in before]  # the baseline: one pass over the memory
    scan_s = time.perf_counter() - start
    core = WipeRecovery("beta")
    start = time.perf_counter()
    core.reset(before, 0.0)
    reset_s = time.perf_counter() - start
    start = time.perf_counter()
    for n in range(STEPS):
        core.step({}, 1.0 + n)
    step_s = (time.perf_counter() - start) / STEPS
    return {
        "records": len(kinds),
        "lost": len(core.lost()),
        "reset_s": round(reset_s, 3),
        "step_ms": round(step_s * 1000, 3),
        "baseline_scan_ms": round(scan_s * 1000, 1),
        "step_vs_scan": round(step_s / scan_s, 4),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=25_000)
    parser.add_argument("--per-service", type=int, default=10)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return bench_main("wipe_recovery", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
