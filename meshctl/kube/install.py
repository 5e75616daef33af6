"""What ``meshctl install`` and ``uninstall`` do to a cluster, without the CLI around it.

Install: the rendered objects (``render``) plus the TLS Secrets (``tlssecrets``), each
server-side applied in ``APPLY_ORDER``; an object whose resourceVersion did not move is
``unchanged``. Readiness: the meshapi Deployment has observed its generation and has a ready
replica; the agent DaemonSet has ``numberReady == desiredNumberScheduled > 0``. Uninstall deletes
every object labelled ``app.kubernetes.io/part-of=cellmesh`` (the install's) in reverse order,
then the namespace, unless it holds the mesh CA's Secret ``cellmesh-ca`` (never deleted here:
losing it loses the mesh CA's key).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from meshctl.kube.client import KubeClient
from meshctl.kube.render import APPLY_ORDER, NAMESPACE, PART_OF_LABEL
from meshctl.kube.tlssecrets import CA_SECRET

__all__ = [
    "AGENT_DAEMONSET",
    "MESHAPI_DEPLOYMENT",
    "Applied",
    "apply_all",
    "leftovers",
    "readiness_problems",
    "uninstall",
    "wait_until",
]

MESHAPI_DEPLOYMENT: Final = "cellmesh-meshapi"
AGENT_DAEMONSET: Final = "cellmesh-agent"
FIELD_MANAGER: Final = "meshctl-install"
_SELECTOR: Final = f"{PART_OF_LABEL[0]}={PART_OF_LABEL[1]}"


@dataclass(frozen=True)
class Applied:
    """One object install applied or uninstall deleted, and what happened to it."""

    kind: str
    namespace: str | None
    name: str
    action: str  # created | configured | unchanged | deleted | kept | absent
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "action": self.action,
            "note": self.note,
        }


def _meta(obj: dict[str, Any]) -> tuple[str, str, str, str | None]:
    meta = obj.get("metadata") or {}
    return obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace")


def apply_all(
    client: KubeClient, objects: Sequence[dict[str, Any]], *, notes: dict[str, str] | None = None
) -> list[Applied]:
    """Server-side apply each object in order; report created / configured / unchanged."""
    results: list[Applied] = []
    for obj in objects:
        api_version, kind, name, namespace = _meta(obj)
        before = client.get(api_version, kind, name, namespace)
        after = client.apply(obj, field_manager=FIELD_MANAGER)
        if before is None:
            action = "created"
        elif _rv(before) == _rv(after):
            action = "unchanged"
        else:
            action = "configured"
        note = (notes or {}).get(f"{kind}/{name}", "")
        results.append(Applied(kind, namespace, name, action, note))
    return results


def _rv(obj: dict[str, Any]) -> str | None:
    value = (obj.get("metadata") or {}).get("resourceVersion")
    return None if value is None else str(value)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def readiness_problems(client: KubeClient) -> list[str]:
    """What is not ready yet (empty when meshapi and every agent are)."""
    problems: list[str] = []
    dep = client.get("apps/v1", "Deployment", MESHAPI_DEPLOYMENT, NAMESPACE)
    where = f"Deployment {NAMESPACE}/{MESHAPI_DEPLOYMENT}"
    if dep is None:
        problems.append(f"{where} does not exist")
    else:
        status = dep.get("status") or {}
        generation = (dep.get("metadata") or {}).get("generation")
        observed = status.get("observedGeneration")
        if isinstance(generation, int) and _int(observed) < generation:
            problems.append(
                f"{where}: generation {generation} not observed yet (observed {observed})"
            )
        elif _int(status.get("readyReplicas")) < 1:
            problems.append(
                f"{where}: {_int(status.get('readyReplicas'))} of "
                f"{_int((dep.get('spec') or {}).get('replicas'))} replicas ready"
            )
    ds = client.get("apps/v1", "DaemonSet", AGENT_DAEMONSET, NAMESPACE)
    where = f"DaemonSet {NAMESPACE}/{AGENT_DAEMONSET}"
    if ds is None:
        problems.append(f"{where} does not exist")
    else:
        status = ds.get("status") or {}
        desired = _int(status.get("desiredNumberScheduled"))
        ready = _int(status.get("numberReady"))
        if desired == 0:
            problems.append(f"{where}: no agent scheduled on any node yet")
        elif ready != desired:
            problems.append(f"{where}: {ready} of {desired} agents ready")
    return problems


def wait_until(
    check: Callable[[], list[str]],
    *,
    timeout: float,
    interval: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Poll ``check`` until it reports no problem or ``timeout`` passes; the last problems."""
    deadline = clock() + timeout
    while True:
        problems = check()
        if not problems:
            return []
        remaining = deadline - clock()
        if remaining <= 0:
            return problems
        sleep(min(interval, remaining))


def uninstall(client: KubeClient) -> list[Applied]:
    """Delete what install made (reverse order), then the namespace unless it holds the CA."""
    results: list[Applied] = []
    for api_version, kind in reversed(APPLY_ORDER):
        if kind == "Namespace":
            continue
        for obj in client.list(api_version, kind, NAMESPACE, label_selector=_SELECTOR):
            _, _, name, namespace = _meta(obj)
            gone = client.delete(api_version, kind, name, namespace)
            results.append(Applied(kind, namespace, name, "deleted" if gone else "absent"))
    if client.get("v1", "Namespace", NAMESPACE) is None:
        results.append(Applied("Namespace", None, NAMESPACE, "absent"))
    elif client.get("v1", "Secret", CA_SECRET, NAMESPACE) is not None:
        results.append(
            Applied(
                "Namespace",
                None,
                NAMESPACE,
                "kept",
                f"it holds the mesh CA Secret {CA_SECRET}; delete the namespace yourself once "
                "the CA is safe elsewhere",
            )
        )
    else:
        gone = client.delete("v1", "Namespace", NAMESPACE)
        results.append(Applied("Namespace", None, NAMESPACE, "deleted" if gone else "absent"))
    return results


def leftovers(client: KubeClient) -> list[str]:
    """What an uninstall has not removed yet (the namespace may take a while to terminate)."""
    left = [
        f"{kind} {(o.get('metadata') or {}).get('name')}"
        for api_version, kind in APPLY_ORDER
        if kind != "Namespace"
        for o in client.list(api_version, kind, NAMESPACE, label_selector=_SELECTOR)
    ]
    if (
        client.get("v1", "Namespace", NAMESPACE) is not None
        and client.get("v1", "Secret", CA_SECRET, NAMESPACE) is None
    ):
        left.append(f"Namespace {NAMESPACE}")
    return left
