"""The one place the certs package reads the clock.

Every function whose result depends on time takes `now: datetime | None`; tests pass a fixed,
timezone-aware instant and production passes nothing. Certificates speak UTC, so does this module.
"""

from __future__ import annotations

from datetime import UTC, datetime

from certs.errors import CertInputError


def resolve_now(now: datetime | None) -> datetime:
    """Return `now` converted to UTC, or the current UTC time when `now` is None."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise CertInputError(f"now={now.isoformat()} has no timezone; pass an aware datetime")
    return now.astimezone(UTC)
