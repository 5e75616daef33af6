"""API errors of the Kubernetes API double, and the ``Status`` objects they travel as.

Every failure leaves the server as a ``Status`` (kind Status, apiVersion v1, status Failure,
message, reason, details, code) with the matching HTTP code, as kube-apiserver sends it, so the
real clients raise their ``ApiException`` with that body.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KubeError", "status_object"]


class KubeError(ValueError):
    """A request the API refuses: an HTTP code, a Kubernetes ``reason`` and a message."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        return status_object(self.code, self.reason, self.message, self.details)

    # Constructors named after the reasons kube-apiserver uses.
    @classmethod
    def not_found(cls, resource: str, name: str, group: str = "") -> KubeError:
        qualified = f"{resource}.{group}" if group else resource
        return cls(
            404,
            "NotFound",
            f'{qualified} "{name}" not found',
            details={"name": name, "group": group, "kind": resource},
        )

    @classmethod
    def already_exists(cls, resource: str, name: str, group: str = "") -> KubeError:
        qualified = f"{resource}.{group}" if group else resource
        return cls(
            409,
            "AlreadyExists",
            f'{qualified} "{name}" already exists',
            details={"name": name, "group": group, "kind": resource},
        )

    @classmethod
    def conflict(cls, resource: str, name: str, why: str, group: str = "") -> KubeError:
        qualified = f"{resource}.{group}" if group else resource
        return cls(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {qualified} "{name}": {why}',
            details={"name": name, "group": group, "kind": resource},
        )

    @classmethod
    def invalid(
        cls, kind: str, name: str, causes: list[tuple[str, str]], group: str = ""
    ) -> KubeError:
        """422: ``causes`` are (field, message) pairs, e.g. ("metadata.name", "Required value")."""
        text = ", ".join(f"{field}: {message}" for field, message in causes)
        return cls(
            422,
            "Invalid",
            f'{kind} "{name}" is invalid: {text}',
            details={
                "name": name,
                "group": group,
                "kind": kind,
                "causes": [
                    {"reason": "FieldValueInvalid", "message": message, "field": field}
                    for field, message in causes
                ],
            },
        )

    @classmethod
    def bad_request(cls, message: str) -> KubeError:
        return cls(400, "BadRequest", message)

    @classmethod
    def expired(cls, message: str) -> KubeError:
        return cls(410, "Expired", message)

    @classmethod
    def unsupported_media(cls, content_type: str) -> KubeError:
        return cls(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"application/json-patch+json, application/merge-patch+json, "
            f"application/apply-patch+yaml, application/strategic-merge-patch+json "
            f"(got {content_type!r})",
        )

    @classmethod
    def method_not_allowed(cls, method: str, path: str) -> KubeError:
        return cls(405, "MethodNotAllowed", f"the server does not allow {method} on {path}")


def status_object(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        status["details"] = details
    return status
