"""``python -m meshctl.lab.kubeapi``: one Kubernetes API double as a process (one per lab cell).

Serves on ``--listen`` (loopback only; port 0 picks one), writes ``--kubeconfig`` once serving,
prints the URL on stdout, and runs until SIGTERM or SIGINT, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from meshcore.logs import configure_logging
from meshctl.lab.kubeapi.server import KubeApiDouble, is_loopback

__all__ = ["main"]


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, got {value!r}")
    host = host.strip("[]")
    if not is_loopback(host):
        raise argparse.ArgumentTypeError(f"the double serves loopback only, not {host!r}")
    return host, int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m meshctl.lab.kubeapi",
        description="A Kubernetes API server double for the lab and the tests (loopback only).",
    )
    parser.add_argument("--listen", type=_listen, default=("127.0.0.1", 0), metavar="HOST:PORT")
    parser.add_argument("--kubeconfig", type=Path, metavar="OUT", help="write a kubeconfig here")
    parser.add_argument("--context", default="double", help="context (and cluster) name")
    parser.add_argument("--bookmark-interval", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--history", type=int, default=10_000, metavar="EVENTS")
    parser.add_argument("--service-cidr", default="10.96.0.0/12", metavar="CIDR")
    parser.add_argument("--log-level", default="info")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    host, port = args.listen
    double = KubeApiDouble(
        host=host,
        port=port,
        bookmark_interval=args.bookmark_interval,
        history=args.history,
        service_cidr=args.service_cidr,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await double.start()
    try:
        if args.kubeconfig is not None:
            double.write_kubeconfig(args.kubeconfig, context=args.context, cluster=args.context)
        print(double.url, flush=True)
        await stopping.wait()
    finally:
        await double.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        asyncio.run(_serve(args))
    except (ValueError, OSError) as e:
        print(f"kubeapi: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
