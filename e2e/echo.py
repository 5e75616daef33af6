"""The echo server every connectivity-suite pod runs: it answers with who it is.

``python -m e2e.echo --cell C --node N --pod P --listen 0.0.0.0 --port 8080 [--port 53 ...]``
serves every port on TCP and UDP. TCP: on accept it sends ``"<cell> <node> <pod>\n"`` and closes.
UDP: every datagram is answered with the same line, to its sender. It prints ``ready`` once every
socket is bound, and runs until SIGTERM/SIGINT. No dependencies beyond the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from typing import cast


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's UDP transport is not an asyncio.DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(self.reply, addr)


async def serve(listen: str, ports: list[int], reply: bytes) -> None:
    async def on_tcp(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(reply)
            await writer.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    loop = asyncio.get_running_loop()
    servers = []
    transports = []
    for port in ports:
        servers.append(
            await asyncio.start_server(on_tcp, listen, port, reuse_address=True, backlog=1024)
        )
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(reply), local_addr=(listen, port), family=socket.AF_INET
        )
        transports.append(transport)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    for transport in transports:
        transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--pod", required=True)
    parser.add_argument("--listen", default="0.0.0.0")
    parser.add_argument("--port", type=int, action="append", required=True)
    args = parser.parse_args()
    reply = f"{args.cell} {args.node} {args.pod}\n".encode()
    asyncio.run(serve(args.listen, args.port, reply))


if __name__ == "__main__":
    main()
