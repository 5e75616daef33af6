"""Errors raised by the certs package.

Every error names its cause and the offending value or file. `CertError` is the base a caller
catches at an edge (the CLI turns it into a one-line message); the subclasses let code tell a bad
argument from a broken file, a refused overwrite, an identity that is not a mesh identity, and a
chain that does not verify.
"""

from __future__ import annotations


class CertError(Exception):
    """Base of every error this package raises on purpose."""


class CertInputError(CertError, ValueError):
    """An argument is invalid: a bad trust domain, cell or node name, SAN, role or lifetime."""


class CertFileError(CertError):
    """A certificate, key or bundle file is missing, unreadable, or does not hold what it should."""


class AlreadyExistsError(CertError):
    """Refused to overwrite an existing CA or certificate."""


class IdentityError(CertError):
    """A certificate does not carry a valid mesh identity (SPIFFE URI SAN)."""


class ChainError(CertError):
    """A certificate does not verify against a trust bundle: unknown CA, bad signature, or time."""
