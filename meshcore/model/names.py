"""Validated scalar types shared by the records: names, ids, ports, addresses, timestamps.

Each ``check_*`` function returns its input or raises ``ValueError`` with a message a human can
act on; the ``Annotated`` aliases wrap them for pydantic so that records and manifests apply the
same rules. Names follow Kubernetes: cell names are DNS labels of at most 32 characters,
namespaces and service names DNS-1123 labels (at most 63), node names DNS-1123 subdomains (at
most 253). The label and cell-name rule itself is `certs.names` (the lowest layer, shared with
the certificates and meshctl); this module words its messages for records and manifests.
Addresses are parsed from text only (never from integers) and kept canonical, because they
appear in keys.
"""

from __future__ import annotations

import re
import reprlib
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Annotated, Literal, NewType

from pydantic import AfterValidator, Field, PlainSerializer, PlainValidator

from certs.names import MAX_CELL_NAME, dns_label_hint, is_cell_name, is_dns_label

__all__ = [
    "MAX_CELL_ID",
    "MAX_CELL_NAME",
    "CellId",
    "CellIdField",
    "CellName",
    "DnsLabel",
    "DnsSubdomain",
    "IpAddress",
    "IpNetwork",
    "Port",
    "PortName",
    "Protocol",
    "Timestamp",
    "check_cell_name",
    "check_dns_label",
    "check_dns_subdomain",
    "check_port",
    "check_port_name",
    "cut",
    "parse_ip_address",
    "parse_ip_network",
    "shown",
]

MAX_CELL_ID = 255
_MAX_SUBDOMAIN = 253

_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

CellId = NewType("CellId", int)
"""A cell's numeric id, 1..255, unique in a mesh; bits 16-23 of its security identities."""


def _bounded_repr(limit: int) -> reprlib.Repr:
    bounded = reprlib.Repr()
    # Few items per container and few levels: the work and the text stay small even for a
    # value whose containers share themselves many times over (a YAML alias bomb).
    bounded.maxlevel = 3
    bounded.maxtuple = bounded.maxlist = bounded.maxset = bounded.maxfrozenset = 4
    bounded.maxdeque = bounded.maxarray = bounded.maxdict = 4
    bounded.maxstring = bounded.maxother = bounded.maxlong = max(limit, 8)
    return bounded


def shown(value: object, limit: int = 64) -> str:
    """A ``repr`` of untrusted input for messages, at most ``limit`` characters.

    Never builds the full ``repr``: strings are cut before quoting, containers show their first
    items to a bounded depth (``reprlib``), so the cost is bounded whatever the value is.
    """
    if isinstance(value, str):
        text = repr(value[: limit + 1])
    else:
        try:
            text = _bounded_repr(limit).repr(value)
        except ValueError:  # an int past Python's digit limit for str()
            text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cut(text: str, limit: int = 200) -> str:
    """Untrusted text (a file name, a key) as echoed in messages: at most ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_cell_name(value: str) -> str:
    """A DNS label of at most 32 characters: lowercase a-z, 0-9 and '-', alnum at both ends."""
    if not is_cell_name(value):
        raise ValueError(
            f"{shown(value)} is not a valid cell name: {dns_label_hint(MAX_CELL_NAME)}"
        )
    return value


def check_dns_label(value: str) -> str:
    """A DNS-1123 label (namespaces, service names, port names): at most 63 characters."""
    if not is_dns_label(value):
        raise ValueError(f"{shown(value)} is not a valid DNS-1123 label: {dns_label_hint()}")
    return value


def check_dns_subdomain(value: str) -> str:
    """A DNS-1123 subdomain (node names): dot-separated labels, at most 253 characters."""
    if len(value) > _MAX_SUBDOMAIN or not _SUBDOMAIN.fullmatch(value):
        raise ValueError(
            f"{shown(value)} is not a valid DNS-1123 subdomain: use 1-{_MAX_SUBDOMAIN} "
            "lowercase letters, digits, '-' or '.', starting and ending with a letter or digit"
        )
    return value


def check_port_name(value: str) -> str:
    """A port name: empty (an unnamed port) or a DNS-1123 label."""
    return value if value == "" else check_dns_label(value)


def check_port(value: int) -> int:
    """A TCP/UDP port number, 1..65535 (``bool`` is not a port)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{shown(value)} is not a valid port (1-65535)")
    return value


def parse_ip_address(value: object) -> IPv4Address | IPv6Address:
    """An IPv4 or IPv6 address from its text (or an address object); no integers, no zone ids."""
    if isinstance(value, IPv4Address | IPv6Address):
        address: IPv4Address | IPv6Address = value
    elif isinstance(value, str):
        try:
            address = ip_address(value)
        except ValueError:
            raise ValueError(f"{shown(value)} is not an IPv4 or IPv6 address") from None
    else:
        raise ValueError(f"an IP address must be a string, not {type(value).__name__}")
    if isinstance(address, IPv6Address) and address.scope_id is not None:
        raise ValueError(f"{shown(value)}: an IPv6 zone id ('%...') is not allowed")
    return address


def parse_ip_network(value: object) -> IPv4Network | IPv6Network:
    """A CIDR from its text (or a network object); host bits must be zero (``10.0.0.0/8``)."""
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError(f"a CIDR must be a string, not {type(value).__name__}")
    try:
        return ip_network(value, strict=True)
    except ValueError as e:
        raise ValueError(f"{shown(value)} is not a valid CIDR: {e}") from None


CellName = Annotated[str, AfterValidator(check_cell_name)]
DnsLabel = Annotated[str, AfterValidator(check_dns_label)]
DnsSubdomain = Annotated[str, AfterValidator(check_dns_subdomain)]
PortName = Annotated[str, AfterValidator(check_port_name)]
CellIdField = Annotated[CellId, Field(ge=1, le=MAX_CELL_ID)]
Port = Annotated[int, Field(ge=1, le=65535)]
Protocol = Literal["TCP", "UDP"]
Timestamp = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""Unix seconds, finite and not negative."""
IpAddress = Annotated[
    IPv4Address | IPv6Address, PlainValidator(parse_ip_address), PlainSerializer(str)
]
IpNetwork = Annotated[
    IPv4Network | IPv6Network, PlainValidator(parse_ip_network), PlainSerializer(str)
]
