"""Service annotations -> ClusterMesh flags (global, shared, affinity), as Cilium reads them.

Sources (the Kubernetes watch, ``meshctl apply``) call ``parse_service_annotations`` and copy the
result into a ``Service`` record; its warnings travel with the record to status and metrics.
An unknown value never drops the service: it falls back to that key's default and adds a warning
naming the key and the value. The legacy ``io.cilium/*`` keys are accepted; the new key wins when
both are set. ``default_global`` is the default when neither global key is set (the Kubernetes
source passes True for a Namespace annotated ``clustermesh.cilium.io/global: "true"``). As in
Cilium, ``shared`` and ``affinity`` only apply to a global service: a service that is not global
is never shared and has no affinity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from meshcore.model.names import shown
from meshcore.model.records import Affinity

__all__ = [
    "AFFINITY",
    "GLOBAL",
    "LEGACY_AFFINITY",
    "LEGACY_GLOBAL",
    "LEGACY_SHARED",
    "SHARED",
    "ServiceFlags",
    "UnknownValue",
    "parse_service_annotations",
]

GLOBAL = "service.cilium.io/global"
SHARED = "service.cilium.io/shared"
AFFINITY = "service.cilium.io/affinity"
LEGACY_GLOBAL = "io.cilium/global-service"
LEGACY_SHARED = "io.cilium/shared-service"
LEGACY_AFFINITY = "io.cilium/service-affinity"

_BOOLS = {"true": True, "false": False}
_AFFINITIES = {affinity.value: affinity for affinity in Affinity}


@dataclass(frozen=True, slots=True)
class UnknownValue:
    """An annotation whose value is none of the allowed ones (the default was used)."""

    key: str
    value: str
    allowed: tuple[str, ...]

    def __str__(self) -> str:
        allowed = ", ".join(repr(a) for a in self.allowed)
        return f"{self.key}: unknown value {shown(self.value)} (allowed: {allowed})"


@dataclass(frozen=True, slots=True)
class ServiceFlags:
    """The ClusterMesh flags of one service and what was wrong with its annotations.

    ``unknown`` lists the unknown values (also in ``warnings``) for a client that refuses them,
    as ``meshctl apply`` does; it is not part of equality.
    """

    global_: bool = False
    shared: bool = False
    affinity: Affinity = Affinity.NONE
    warnings: tuple[str, ...] = ()
    unknown: tuple[UnknownValue, ...] = field(default=(), compare=False)

    @property
    def exported(self) -> bool:
        """Whether other cells may use this service's local backends."""
        return self.global_ and self.shared


@dataclass(frozen=True, slots=True)
class _Setting:
    key: str  # the annotation key the value came from
    raw: str
    value: str  # trimmed, lowercase


def _pick(
    annotations: Mapping[str, str], new: str, legacy: str, warnings: list[str]
) -> _Setting | None:
    """The setting of ``new`` or else ``legacy``; a warning when both are set and disagree."""
    chosen: _Setting | None = None
    for key in (new, legacy):
        raw = annotations.get(key)
        if raw is None:
            continue
        setting = _Setting(key, raw, str(raw).strip().lower())
        if chosen is None:
            chosen = setting
        elif setting.value != chosen.value:
            warnings.append(
                f"{new}={shown(chosen.raw)} and legacy {legacy}={shown(raw)} disagree; using {new}"
            )
    return chosen


def _bool(
    setting: _Setting | None, default: bool, warnings: list[str], unknown: list[UnknownValue]
) -> bool:
    if setting is None:
        return default
    value = _BOOLS.get(setting.value)
    if value is None:
        unknown.append(UnknownValue(setting.key, setting.raw, tuple(_BOOLS)))
        warnings.append(
            f"{setting.key}: unknown value {shown(setting.raw)} (expected 'true' or 'false'); "
            f"using the default {str(default).lower()!r}"
        )
        return default
    return value


def _affinity(
    setting: _Setting | None, warnings: list[str], unknown: list[UnknownValue]
) -> Affinity:
    if setting is None:
        return Affinity.NONE
    value = _AFFINITIES.get(setting.value)
    if value is None:
        unknown.append(UnknownValue(setting.key, setting.raw, tuple(_AFFINITIES)))
        warnings.append(
            f"{setting.key}: unknown value {shown(setting.raw)} (expected 'local', 'remote' or "
            "'none'); using the default 'none'"
        )
        return Affinity.NONE
    return value


def parse_service_annotations(
    annotations: Mapping[str, str], *, default_global: bool = False
) -> ServiceFlags:
    """The flags that ``annotations`` ask for; problems become warnings, never errors.
    ``default_global``: whether the service is global when no global annotation is set."""
    warnings: list[str] = []
    unknown: list[UnknownValue] = []
    global_ = _bool(
        _pick(annotations, GLOBAL, LEGACY_GLOBAL, warnings), default_global, warnings, unknown
    )
    shared = _bool(_pick(annotations, SHARED, LEGACY_SHARED, warnings), True, warnings, unknown)
    affinity_setting = _pick(annotations, AFFINITY, LEGACY_AFFINITY, warnings)
    affinity = _affinity(affinity_setting, warnings, unknown)
    if not global_:
        if affinity is not Affinity.NONE and affinity_setting is not None:
            warnings.append(
                f"{affinity_setting.key}={shown(affinity_setting.raw)} has no effect: "
                "the service is not global"
            )
        shared, affinity = False, Affinity.NONE
    return ServiceFlags(
        global_=global_,
        shared=shared,
        affinity=affinity,
        warnings=tuple(warnings),
        unknown=tuple(unknown),
    )
