"""Validation of the names that go into mesh certificates.

Trust domains, cell names, node names, DNS and IP SANs are checked here, once, before they reach
a certificate, and again when an identity is read back from one. Each check raises
`CertInputError` with a message that quotes the bad value and says what a good one looks like.
Pure functions, no IO.

The mesh's one rule for DNS labels and cell names (`is_dns_label`, `is_cell_name`) lives here
because certs is the lowest layer: meshcore imports certs, never the reverse. The record model
(`meshcore.model.names`) and meshctl's context names use these predicates with their own messages.
"""

from __future__ import annotations

import ipaddress
import re

from certs.errors import CertInputError

__all__ = [
    "MAX_CELL_NAME",
    "MAX_DNS_LABEL",
    "MAX_DNS_NAME",
    "MAX_NODE_NAME",
    "dns_label_hint",
    "is_cell_name",
    "is_dns_label",
    "is_lower_dns_name",
    "validate_cell_name",
    "validate_dns_name",
    "validate_ip_address",
    "validate_node_name",
    "validate_trust_domain",
]

MAX_CELL_NAME = 32
"""Cell names are DNS labels of at most 32 characters (DESIGN.md, "Names and ids")."""

MAX_DNS_LABEL = 63
"""A DNS-1123 label: at most 63 characters."""

MAX_NODE_NAME = 64
"""Node names go into the subject CN, which X.509 limits to 64 characters."""

MAX_DNS_NAME = 253

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_LABEL_ANY_CASE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def is_dns_label(value: str, *, max_length: int = MAX_DNS_LABEL) -> bool:
    """A lowercase DNS-1123 label: a-z, 0-9 and '-', alphanumeric at both ends, 1..max_length."""
    return len(value) <= max_length and _LABEL.fullmatch(value) is not None


def dns_label_hint(max_length: int = MAX_DNS_LABEL) -> str:
    """What a good label looks like, for the messages of every check of the rule."""
    return (
        f"use 1-{max_length} lowercase letters, digits or '-', starting and ending with a "
        "letter or digit"
    )


def is_cell_name(value: str) -> bool:
    """The cell-name rule: a DNS label of at most MAX_CELL_NAME (32) characters."""
    return is_dns_label(value, max_length=MAX_CELL_NAME)


def is_lower_dns_name(value: str) -> bool:
    """Lowercase DNS labels joined by '.' (no length limit on the whole: callers set theirs)."""
    return all(is_dns_label(label) for label in value.split("."))


def validate_trust_domain(trust_domain: str) -> str:
    """Return `trust_domain` if it is a lowercase DNS-like name, e.g. `mesh.example.org`."""
    if not trust_domain:
        raise CertInputError("trust domain is empty; use a lowercase DNS name like 'mesh.local'")
    if len(trust_domain) > MAX_DNS_NAME:
        raise CertInputError(
            f"trust domain {trust_domain[:40]!r}... is {len(trust_domain)} characters long; "
            f"at most {MAX_DNS_NAME} are allowed"
        )
    if not is_lower_dns_name(trust_domain):
        raise CertInputError(
            f"invalid trust domain {trust_domain!r}: use a lowercase DNS name like 'mesh.local' "
            "(dot-separated labels of a-z, 0-9 and '-', not starting or ending with '-')"
        )
    return trust_domain


def validate_cell_name(cell: str) -> str:
    """Return `cell` if it is a DNS label of at most 32 characters."""
    if not cell:
        raise CertInputError("cell name is empty; use a DNS label like 'cell-a'")
    if len(cell) > MAX_CELL_NAME:
        raise CertInputError(
            f"cell name {cell!r} is {len(cell)} characters long; at most {MAX_CELL_NAME} "
            "are allowed"
        )
    if not is_cell_name(cell):
        raise CertInputError(f"invalid cell name {cell!r}: {dns_label_hint(MAX_CELL_NAME)}")
    return cell


def validate_node_name(node: str) -> str:
    """Return `node` if it is a lowercase DNS name (a Kubernetes node name) of at most 64 chars."""
    if not node:
        raise CertInputError("node name is empty")
    if len(node) > MAX_NODE_NAME:
        raise CertInputError(
            f"node name {node!r} is {len(node)} characters long; at most {MAX_NODE_NAME} "
            "fit in a certificate's common name"
        )
    if not is_lower_dns_name(node):
        raise CertInputError(
            f"invalid node name {node!r}: use a lowercase DNS name (labels of a-z, 0-9 and '-', "
            "separated by dots)"
        )
    return node


def validate_dns_name(name: str) -> str:
    """Return `name` lowercased if it is a DNS name; a leading `*.` wildcard label is allowed."""
    labels = name.split(".")
    plain = labels[1:] if labels[0] == "*" and len(labels) > 1 else labels
    if (
        not name
        or len(name) > MAX_DNS_NAME
        or not all(_DNS_LABEL_ANY_CASE.fullmatch(label) for label in plain)
    ):
        raise CertInputError(
            f"invalid DNS name {name!r}: use dot-separated labels of letters, digits and '-' "
            "(a leading '*.' wildcard is allowed)"
        )
    return name.lower()


def validate_ip_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse `address` as an IPv4 or IPv6 address."""
    try:
        return ipaddress.ip_address(address)
    except ValueError as e:
        raise CertInputError(f"invalid IP address {address!r}: not an IPv4 or IPv6 address") from e
