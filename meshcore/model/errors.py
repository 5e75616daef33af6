"""The two ways model input can be wrong: a stored record, or an operator's manifest.

``RecordError`` is raised for anything read from (or about to be written to) the key-value store:
a bad key, bad JSON, a field out of range, a body that does not belong at its key. Watchers catch
it, drop the record and count it; it never crashes a watcher. ``ManifestError`` is raised while
turning a Kubernetes manifest into records and names the file and the field path, for a human.
Both are ``ValueError`` so that callers converting untrusted input can catch one base class.
"""

from __future__ import annotations

__all__ = ["ManifestError", "RecordError"]

# Keys in messages are cut to this many characters; the full key stays on ``RecordError.key``.
_MAX_SHOWN_KEY = 200


class RecordError(ValueError):
    """A stored record (or its key) is invalid: ``bad record at <key>: <reason>``."""

    key: str
    reason: str

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(key, reason)
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        shown = self.key if len(self.key) <= _MAX_SHOWN_KEY else self.key[:_MAX_SHOWN_KEY] + "..."
        return f"bad record at {shown}: {self.reason}"


class ManifestError(ValueError):
    """A manifest is invalid: ``<source>[: line <n>][: <path>]: <reason>``.

    ``source`` names the file or document, ``path`` the field (``spec.ports[1].port``, empty when
    the whole document is at fault) and ``line`` the 1-based line when the YAML parser knows it.
    """

    source: str
    path: str
    reason: str
    line: int | None

    def __init__(self, source: str, path: str, reason: str, *, line: int | None = None) -> None:
        super().__init__(source, path, reason, line)
        self.source = source
        self.path = path
        self.reason = reason
        self.line = line

    def __str__(self) -> str:
        parts = [self.source]
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.path:
            parts.append(self.path)
        parts.append(self.reason)
        return ": ".join(parts)
