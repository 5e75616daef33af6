"""The shared mesh CA and the mTLS certificates of every cell.

One CA serves a whole mesh. It issues each cell's certificates with exactly one SPIFFE-style URI
SAN, `spiffe://<trust-domain>/cell/<cell>/<role>`, role one of meshapi | agent | peer | admin.
Flow: `create_ca` → `issue_certificate` (per cell, role, node) → files loaded by TLS servers and
clients → `identity_from_certificate` on the verified peer certificate → authorization by cell
and role. `add_to_bundle` / `verify_chain` handle rotation; `inspect_certificate` and
`expiry_report` serve meshctl. Imports only the stdlib and `cryptography`: certs is the lowest
layer, and meshcore takes the mesh's one cell-name rule from `names`. Reading order:
certs/README.md.

On-disk layout (a contract: meshapi, nodeagent and the deploy Secrets rely on it):

    CA directory (created mode 0700)
        ca.crt   PEM CA certificate, URI SAN spiffe://<trust-domain> (the trust domain's source)
        ca.key   PEM PKCS8 ECDSA P-256 private key, mode 0600
    TLS directory (what a server or client loads)
        ca.crt   trust bundle: one or more concatenated PEM CA certificates (several in rotation)
        tls.crt  PEM leaf certificate only (no chain; the mesh CA issues leaves directly)
        tls.key  PEM PKCS8 ECDSA P-256 private key, mode 0600

Leaf certificates: subject CN is the node name for a node-bound agent certificate and
`<cell>/<role>` otherwise. meshapi certificates have serverAuth+clientAuth and DNS/IP SANs
(default localhost, 127.0.0.1); agent, peer and admin certificates are clientAuth only. A leaf's
not-after is clipped to its CA's not-after; validity starts five minutes before issue (skew).
"""

from certs.authority import MAX_DAYS, CertificateAuthority, create_ca, issue_certificate, load_ca
from certs.bundle import add_to_bundle, is_ca_certificate, load_bundle, verify_chain
from certs.errors import (
    AlreadyExistsError,
    CertError,
    CertFileError,
    CertInputError,
    ChainError,
    IdentityError,
)
from certs.identity import (
    MeshIdentity,
    Role,
    identity_from_certificate,
    parse_spiffe_id,
    spiffe_id,
)
from certs.inspection import (
    CertificateInfo,
    ExpiryEntry,
    ExpiryStatus,
    describe_certificate,
    expiry_report,
    inspect_certificate,
)
from certs.layout import (
    BUNDLE_FILE,
    CA_CERT_FILE,
    CA_KEY_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    CaFiles,
    TlsFiles,
)
from certs.names import (
    validate_cell_name,
    validate_dns_name,
    validate_ip_address,
    validate_node_name,
    validate_trust_domain,
)

__all__ = [
    "BUNDLE_FILE",
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "MAX_DAYS",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "AlreadyExistsError",
    "CaFiles",
    "CertError",
    "CertFileError",
    "CertInputError",
    "CertificateAuthority",
    "CertificateInfo",
    "ChainError",
    "ExpiryEntry",
    "ExpiryStatus",
    "IdentityError",
    "MeshIdentity",
    "Role",
    "TlsFiles",
    "add_to_bundle",
    "create_ca",
    "describe_certificate",
    "expiry_report",
    "identity_from_certificate",
    "inspect_certificate",
    "is_ca_certificate",
    "issue_certificate",
    "load_bundle",
    "load_ca",
    "parse_spiffe_id",
    "spiffe_id",
    "validate_cell_name",
    "validate_dns_name",
    "validate_ip_address",
    "validate_node_name",
    "validate_trust_domain",
    "verify_chain",
]
