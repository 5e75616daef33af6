"""Command-line flag checks shared by the ``meshapi`` and ``nodeagent`` console scripts.

Each turns a bad value into a click usage error that names the flag (exit 2, no traceback).
"""

from __future__ import annotations

import ipaddress

import click


def host_port(value: str, flag: str) -> str:
    """``HOST:PORT`` with a port in 0..65535."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint=flag)
    return value


def cidr(value: str, flag: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network in canonical form (host bits zero)."""
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise click.BadParameter(f"{value!r}: {e}", param_hint=flag) from e


def ip(value: str, flag: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=flag) from e
