"""Mesh identities: the SPIFFE-style ID in a certificate and what a server learns from it.

A mesh certificate carries exactly one URI SAN, `spiffe://<trust-domain>/cell/<cell>/<role>`;
an agent certificate bound to a node also carries the node name as its subject common name.
TLS verifies the chain at runtime; `identity_from_certificate` then reads the already-verified
peer certificate into a `MeshIdentity`, which meshapi authorizes by cell and role. Anything that
is not a well-formed mesh identity raises `IdentityError` naming the problem. Pure, no IO.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.x509.oid import NameOID

from certs.errors import CertError, CertInputError, IdentityError
from certs.names import validate_cell_name, validate_node_name, validate_trust_domain
from certs.pemfiles import parse_certificate

SPIFFE_SCHEME = "spiffe://"


class Role(StrEnum):
    """What a certificate's holder is allowed to be in the mesh."""

    MESHAPI = "meshapi"  # a cell's API server; the only server role
    AGENT = "agent"  # a node agent; may be bound to one node
    PEER = "peer"  # another cell's control plane, read-only
    ADMIN = "admin"  # an operator: meshctl writes through the admin API


@dataclass(frozen=True)
class MeshIdentity:
    """Who a verified certificate belongs to."""

    trust_domain: str
    cell: str
    role: Role
    node: str | None = None

    @property
    def spiffe_id(self) -> str:
        return spiffe_id(trust_domain=self.trust_domain, cell=self.cell, role=self.role)


def spiffe_id(*, trust_domain: str, cell: str, role: Role) -> str:
    """Build `spiffe://<trust-domain>/cell/<cell>/<role>` (arguments are not re-validated)."""
    return f"{SPIFFE_SCHEME}{trust_domain}/cell/{cell}/{role.value}"


def trust_domain_id(trust_domain: str) -> str:
    """The SPIFFE ID of a trust domain itself, as carried by the mesh CA: `spiffe://<td>`."""
    return f"{SPIFFE_SCHEME}{trust_domain}"


def leaf_common_name(*, cell: str, role: Role, node: str | None) -> str:
    """The subject CN of a leaf: the node name when bound to one, else `<cell>/<role>`.

    The '/' cannot occur in a node name, so the two forms never collide.
    """
    return node if node is not None else f"{cell}/{role.value}"


def uri_sans(cert: x509.Certificate) -> list[str]:
    """All URI SANs of `cert`, in order; empty when it has no SAN extension."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def trust_domain_of_ca(cert: x509.Certificate) -> str:
    """Read the trust domain from a mesh CA certificate's `spiffe://<td>` URI SAN."""
    uris = [u for u in uri_sans(cert) if u.startswith(SPIFFE_SCHEME)]
    if len(uris) != 1:
        raise IdentityError(
            f"CA certificate {cert.subject.rfc4514_string()!r} has {len(uris)} SPIFFE URI SANs; "
            "a mesh CA carries exactly one, spiffe://<trust-domain>"
        )
    rest = uris[0].removeprefix(SPIFFE_SCHEME)
    if "/" in rest:
        raise IdentityError(
            f"CA certificate URI SAN {uris[0]!r} has a path; a mesh CA carries just "
            "spiffe://<trust-domain>"
        )
    try:
        return validate_trust_domain(rest)
    except CertInputError as e:
        raise IdentityError(f"CA certificate URI SAN {uris[0]!r}: {e}") from e


def parse_spiffe_id(uri: str, *, trust_domain: str | None = None) -> MeshIdentity:
    """Parse a mesh SPIFFE ID; with `trust_domain`, also require that trust domain."""
    if not uri.startswith(SPIFFE_SCHEME):
        raise IdentityError(f"URI SAN {uri!r} is not a SPIFFE ID (must start with spiffe://)")
    domain, slash, path = uri.removeprefix(SPIFFE_SCHEME).partition("/")
    try:
        validate_trust_domain(domain)
    except CertInputError as e:
        raise IdentityError(f"SPIFFE ID {uri!r}: {e}") from e
    if trust_domain is not None and domain != trust_domain:
        raise IdentityError(
            f"SPIFFE ID {uri!r} belongs to trust domain {domain!r}, expected {trust_domain!r}"
        )
    segments = path.split("/")
    if not slash or len(segments) != 3 or segments[0] != "cell":
        raise IdentityError(
            f"SPIFFE ID {uri!r} has a malformed path; expected spiffe://{domain}/cell/<cell>/<role>"
        )
    _, cell, role_name = segments
    try:
        validate_cell_name(cell)
    except CertInputError as e:
        raise IdentityError(f"SPIFFE ID {uri!r}: {e}") from e
    try:
        role = Role(role_name)
    except ValueError as e:
        known = ", ".join(r.value for r in Role)
        raise IdentityError(
            f"SPIFFE ID {uri!r} has unknown role {role_name!r}; known roles: {known}"
        ) from e
    return MeshIdentity(trust_domain=domain, cell=cell, role=role)


def _node_of(cert: x509.Certificate, identity: MeshIdentity) -> str | None:
    """The node an agent certificate is bound to, from its subject CN; None if unbound."""
    if identity.role is not Role.AGENT:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    common_name = names[0].value
    if not isinstance(common_name, str):
        raise IdentityError("agent certificate has a non-text common name")
    if common_name == leaf_common_name(cell=identity.cell, role=identity.role, node=None):
        return None
    try:
        return validate_node_name(common_name)
    except CertInputError as e:
        raise IdentityError(f"agent certificate common name is not a node name: {e}") from e


def identity_from_certificate(
    cert: x509.Certificate | bytes, *, trust_domain: str | None = None
) -> MeshIdentity:
    """Read the mesh identity of an already-verified peer certificate (PEM, DER or parsed).

    This does no chain or time verification: TLS did that. It checks that the certificate
    carries exactly one URI SAN, a well-formed mesh SPIFFE ID, in `trust_domain` when given.
    """
    if isinstance(cert, bytes):
        try:
            cert = parse_certificate(cert, source="peer certificate")
        except CertError as e:
            raise IdentityError(str(e)) from e
    uris = uri_sans(cert)
    subject = cert.subject.rfc4514_string()
    if not uris:
        raise IdentityError(f"certificate {subject!r} has no SPIFFE URI SAN")
    if len(uris) > 1:
        raise IdentityError(
            f"certificate {subject!r} has {len(uris)} URI SANs ({', '.join(uris)}); "
            "a mesh certificate carries exactly one"
        )
    identity = parse_spiffe_id(uris[0], trust_domain=trust_domain)
    node = _node_of(cert, identity)
    if node is None:
        return identity
    return MeshIdentity(
        trust_domain=identity.trust_domain, cell=identity.cell, role=identity.role, node=node
    )
