"""meshctl contexts, like kubeconfig: which cell's meshapi to talk to, and with which certificate.

A context names a meshapi address (``HOST:PORT``), a TLS directory (``ca.crt``, ``tls.crt``,
``tls.key``, as ``meshctl certs issue`` writes it) and an optional TLS server name. The config
file is JSON ``{"current": name, "contexts": {name: {"server", "tls_dir", "server_name"}}}``,
written atomically (temporary file + rename, mode 0600). Pure file IO and validation, no click:
``meshctl context ...`` (``cli``) and the lab call ``add_context`` / ``resolve_context`` here.
Every problem is a ``ContextError`` subclass whose message names its cause (and the file).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from certs.names import MAX_DNS_NAME, dns_label_hint, is_dns_label, is_lower_dns_name

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "TLS_FILES",
    "ConfigFileError",
    "Context",
    "ContextError",
    "ContextSelection",
    "InvalidContextError",
    "MeshctlConfig",
    "UnknownContextError",
    "add_context",
    "check_context_name",
    "check_server",
    "check_server_name",
    "check_tls_dir",
    "delete_context",
    "load_config",
    "resolve_context",
    "save_config",
    "use_context",
]

DEFAULT_CONFIG_PATH = Path("~/.config/cellmesh/meshctl.json")
TLS_FILES = ("ca.crt", "tls.crt", "tls.key")


class ContextError(ValueError):
    """Base of the context errors; the message says what is wrong and where."""


class InvalidContextError(ContextError):
    """A context field (name, server, TLS directory, server name) is invalid."""


class UnknownContextError(ContextError):
    """No context of that name (or none selected); the message lists the known ones."""


class ConfigFileError(ContextError):
    """The config file cannot be read, parsed or written; the message names the file."""


def check_context_name(name: str) -> str:
    """A DNS label: 1-63 lowercase letters, digits or '-', alphanumeric at both ends."""
    if not is_dns_label(name):
        raise InvalidContextError(f"context name {name!r} is not a DNS label: {dns_label_hint()}")
    return name


def _is_host_name(host: str) -> bool:
    return len(host) <= MAX_DNS_NAME and is_lower_dns_name(host)


def check_server(server: str) -> str:
    """``HOST:PORT``: a host name, an IPv4 address or ``[IPv6]``, and a port 1-65535."""
    host, colon, port = server.rpartition(":")
    if not colon or not host:
        raise InvalidContextError(f"server {server!r} is not HOST:PORT")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise InvalidContextError(f"server {server!r}: port {port!r} is not a number 1-65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidContextError(
                f"server {server!r}: {host!r} is not an IPv6 address"
            ) from None
        return server
    if ":" in host:
        raise InvalidContextError(f"server {server!r}: write an IPv6 address as [ADDR]:PORT")
    try:
        IPv4Address(host)
    except ValueError:
        pass
    else:
        return server
    if not _is_host_name(host.lower()) or host.replace(".", "").isdigit():
        raise InvalidContextError(
            f"server {server!r}: {host!r} is not a host name or an IP address"
        )
    return server


def check_server_name(server_name: str) -> str:
    """The TLS server name to verify instead of the host: a DNS name."""
    if not _is_host_name(server_name):
        raise InvalidContextError(
            f"server name {server_name!r} is not a DNS name (lowercase labels joined by '.')"
        )
    return server_name


def check_tls_dir(tls_dir: Path) -> Path:
    """A directory holding ``ca.crt``, ``tls.crt`` and ``tls.key``."""
    if not tls_dir.is_dir():
        raise InvalidContextError(f"TLS directory {tls_dir} does not exist or is not a directory")
    missing = [name for name in TLS_FILES if not (tls_dir / name).is_file()]
    if missing:
        raise InvalidContextError(
            f"TLS directory {tls_dir} is missing {', '.join(missing)} "
            "(expected ca.crt, tls.crt and tls.key, as 'meshctl certs issue' writes them)"
        )
    return tls_dir


@dataclass(frozen=True)
class Context:
    """Where one cell's meshapi listens and which certificate meshctl presents to it."""

    name: str
    server: str
    tls_dir: Path
    server_name: str | None = None

    def __post_init__(self) -> None:
        check_context_name(self.name)
        check_server(self.server)
        if self.server_name is not None:
            check_server_name(self.server_name)


@dataclass(frozen=True)
class MeshctlConfig:
    """The whole config file: the contexts by name and the current one (if any)."""

    current: str | None = None
    contexts: dict[str, Context] = field(default_factory=dict)

    def known(self) -> str:
        """The context names for an error message."""
        return ", ".join(sorted(self.contexts)) or "none; add one with 'meshctl context add'"

    def get(self, name: str) -> Context:
        try:
            return self.contexts[name]
        except KeyError:
            raise UnknownContextError(f"unknown context {name!r} (known: {self.known()})") from None


def _parse_context(path: Path, name: object, body: object) -> Context:
    where = f"{path}: contexts.{name}"
    if not isinstance(name, str):  # pragma: no cover - JSON object keys are strings
        raise ConfigFileError(f"{path}: context names must be strings")
    if not isinstance(body, dict):
        raise ConfigFileError(f"{where}: expected an object")
    unknown = set(body) - {"server", "tls_dir", "server_name"}
    if unknown:
        raise ConfigFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    server, tls_dir, server_name = body.get("server"), body.get("tls_dir"), body.get("server_name")
    if not isinstance(server, str):
        raise ConfigFileError(f"{where}.server: expected a string")
    if not isinstance(tls_dir, str) or not tls_dir:
        raise ConfigFileError(f"{where}.tls_dir: expected a non-empty string")
    if server_name is not None and not isinstance(server_name, str):
        raise ConfigFileError(f"{where}.server_name: expected a string or null")
    try:
        return Context(name, server, Path(tls_dir), server_name)
    except InvalidContextError as e:
        raise ConfigFileError(f"{path}: {e}") from None


def _parse_config(path: Path, data: Any) -> MeshctlConfig:
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: expected a JSON object with 'current' and 'contexts'")
    unknown = set(data) - {"current", "contexts"}
    if unknown:
        raise ConfigFileError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    raw_contexts = data.get("contexts", {})
    if not isinstance(raw_contexts, dict):
        raise ConfigFileError(f"{path}: contexts: expected an object")
    contexts = {name: _parse_context(path, name, body) for name, body in raw_contexts.items()}
    current = data.get("current")
    if current is not None:
        if not isinstance(current, str):
            raise ConfigFileError(f"{path}: current: expected a string or null")
        if current not in contexts:
            raise ConfigFileError(
                f"{path}: current context {current!r} is not among the contexts "
                f"({', '.join(sorted(contexts)) or 'none'})"
            )
    return MeshctlConfig(current=current, contexts=contexts)


def load_config(path: Path) -> MeshctlConfig:
    """The config at ``path``; an empty one when the file does not exist."""
    path = path.expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return MeshctlConfig()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigFileError(f"cannot read config file {path}: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigFileError(
            f"config file {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
            "fix or remove it"
        ) from None
    return _parse_config(path, data)


def _to_json(cfg: MeshctlConfig) -> dict[str, Any]:
    return {
        "current": cfg.current,
        "contexts": {
            name: {
                "server": ctx.server,
                "tls_dir": str(ctx.tls_dir),
                "server_name": ctx.server_name,
            }
            for name, ctx in sorted(cfg.contexts.items())
        },
    }


def save_config(path: Path, cfg: MeshctlConfig) -> None:
    """Write ``cfg`` to ``path`` atomically (temporary file in the same directory + rename)."""
    path = path.expanduser()
    if cfg.current is not None and cfg.current not in cfg.contexts:
        raise UnknownContextError(f"current context {cfg.current!r} is not among the contexts")
    text = json.dumps(_to_json(cfg), indent=2) + "\n"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkstemp creates the file with mode 0600, so the key paths are never world-readable.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise ConfigFileError(f"cannot write config file {path}: {e}") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfigFileError(f"cannot write config file {path}: {e}") from e


def add_context(path: Path, ctx: Context, *, use: bool = False) -> MeshctlConfig:
    """Add ``ctx`` (or replace the one of the same name); with ``use``, make it current.

    The TLS directory must hold ``ca.crt``, ``tls.crt`` and ``tls.key``; it is stored absolute.
    """
    ctx = replace(ctx, tls_dir=check_tls_dir(ctx.tls_dir.expanduser()).absolute())
    cfg = load_config(path)
    new = MeshctlConfig(
        current=ctx.name if use else cfg.current, contexts={**cfg.contexts, ctx.name: ctx}
    )
    save_config(path, new)
    return new


def use_context(path: Path, name: str) -> MeshctlConfig:
    """Make context ``name`` the current one."""
    cfg = load_config(path)
    cfg.get(name)
    new = replace(cfg, current=name)
    save_config(path, new)
    return new


def delete_context(path: Path, name: str) -> MeshctlConfig:
    """Remove context ``name``; when it was the current one, no context is current afterwards."""
    cfg = load_config(path)
    cfg.get(name)
    contexts = {n: c for n, c in cfg.contexts.items() if n != name}
    new = MeshctlConfig(current=None if cfg.current == name else cfg.current, contexts=contexts)
    save_config(path, new)
    return new


def resolve_context(path: Path, name: str | None) -> Context:
    """Context ``name``, or the current one when ``name`` is None; its TLS directory checked."""
    cfg = load_config(path)
    if name is None:
        if cfg.current is None:
            raise UnknownContextError(
                "no context selected: pass --context NAME (or set MESHCTL_CONTEXT) or run "
                f"'meshctl context use NAME' (known: {cfg.known()})"
            )
        name = cfg.current
    ctx = cfg.get(name)
    try:
        check_tls_dir(ctx.tls_dir)
    except InvalidContextError as e:
        raise InvalidContextError(f"context {name!r}: {e}") from None
    return ctx


@dataclass(frozen=True)
class ContextSelection:
    """What the global ``--config`` and ``--context`` options chose (the click context object)."""

    config_path: Path
    context_name: str | None = None

    def resolve(self) -> Context:
        return resolve_context(self.config_path, self.context_name)
