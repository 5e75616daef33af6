"""Reading and writing certificate, key and bundle files.

The rest of the package never opens a file itself: it asks this module, which turns IO and parse
failures into `CertFileError` naming the path, and writes atomically (temp file in the same
directory, then link or rename) so a reader never sees half a key. Private keys are PKCS8 PEM,
mode 0600; certificates and bundles are PEM, mode 0644.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.errors import AlreadyExistsError, CertFileError

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644

_PEM_MARKER = b"-----BEGIN"


def parse_certificates(data: bytes, *, source: str) -> list[x509.Certificate]:
    """Parse every certificate in `data`: concatenated PEM blocks, or a single DER certificate."""
    try:
        if data.lstrip().startswith(_PEM_MARKER):
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise CertFileError(f"{source}: not a PEM or DER X.509 certificate") from e


def parse_certificate(data: bytes, *, source: str) -> x509.Certificate:
    """Parse the first certificate in `data` (PEM or DER)."""
    return parse_certificates(data, source=source)[0]


def _read_bytes(path: Path, *, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise CertFileError(f"{what} {path} does not exist") from e
    except OSError as e:
        raise CertFileError(f"cannot read {what} {path}: {e.strerror}") from e


def read_certificates(path: Path, *, what: str = "certificate file") -> list[x509.Certificate]:
    """Read every certificate in the file at `path`."""
    return parse_certificates(_read_bytes(path, what=what), source=str(path))


def read_certificate(path: Path, *, what: str = "certificate file") -> x509.Certificate:
    """Read the first certificate in the file at `path`."""
    return read_certificates(path, what=what)[0]


def read_ec_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read an unencrypted PEM private key and check that it is an EC key."""
    return parse_ec_private_key(_read_bytes(path, what="private key"), source=str(path))


def parse_ec_private_key(data: bytes, *, source: str) -> ec.EllipticCurvePrivateKey:
    """An unencrypted PEM EC private key from bytes; ``source`` names where they came from."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        # TypeError: the key is encrypted; mesh keys are protected by file mode, not passwords.
        raise CertFileError(f"{source}: not an unencrypted PEM private key ({e})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertFileError(f"{source}: expected an EC private key, found {type(key).__name__}")
    return key


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_file(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    """Write `data` to `path` atomically with exactly `mode`.

    Without `overwrite`, an existing file is never replaced, even one that appears while we
    write: the final step is a hard link, which fails if the name is taken.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as e:
                raise AlreadyExistsError(f"{path} already exists; refusing to overwrite it") from e
    except OSError as e:
        raise CertFileError(f"cannot write {path}: {e.strerror}") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def ensure_directory(path: Path, *, mode: int = 0o755) -> None:
    """Create `path` (and parents) if missing; a new directory gets `mode`."""
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as e:
        raise CertFileError(f"cannot create directory {path}: {e.strerror}") from e
    if not path.is_dir():
        raise CertFileError(f"{path} exists and is not a directory")
