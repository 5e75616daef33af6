"""Render deploy/ for one cell: a temporary Kustomize overlay over deploy/base, then
``kubectl kustomize``.

``CellSpec`` is what makes a cell (name, id, pod CIDRs, extra Service annotations). The overlay
written for it holds only the ConfigMap ``cellmesh-config`` and, when needed, patches (more
than one pod CIDR, Service annotations); everything else comes from deploy/base unchanged, so
``meshctl install`` and ``kubectl apply -k deploy/overlays/<cell>`` deploy the same objects.
deploy/ is located (in order): ``--deploy-dir``, ``$CELLMESH_DEPLOY_DIR``, the source checkout
next to this package, ``<prefix>/share/cellmesh/deploy``. The overlay names the base by a
relative path and uses the kustomize v2 spelling (``bases``), which every kubectl renders.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from certs import CertInputError, validate_cell_name

__all__ = [
    "APPLY_ORDER",
    "NAMESPACE",
    "PART_OF_LABEL",
    "CellSpec",
    "RenderError",
    "apply_order",
    "find_deploy_dir",
    "render_cell",
    "validate_pod_cidrs",
]

NAMESPACE: Final = "cellmesh"
PART_OF_LABEL: Final = ("app.kubernetes.io/part-of", "cellmesh")
DEPLOY_DIR_ENV: Final = "CELLMESH_DEPLOY_DIR"
_KUSTOMIZE_TIMEOUT: Final = 60.0

# Dependency order for apply (uninstall walks it backwards): what others refer to comes first.
APPLY_ORDER: Final[tuple[tuple[str, str], ...]] = (
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "DaemonSet"),
    ("policy/v1", "PodDisruptionBudget"),
)


class RenderError(Exception):
    """deploy/ could not be found or rendered; the message names the directory or command."""


@dataclass(frozen=True)
class CellSpec:
    """One cell's settings: everything that differs between cells' installs."""

    cell: str
    cell_id: int
    pod_cidrs: tuple[str, ...]
    service_annotations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            validate_cell_name(self.cell)
        except CertInputError as e:
            raise RenderError(str(e)) from e
        if not 1 <= self.cell_id <= 255:
            raise RenderError(f"cell id {self.cell_id} is out of range; give 1-255")
        validate_pod_cidrs(self.pod_cidrs)


def validate_pod_cidrs(pod_cidrs: Sequence[str]) -> None:
    """At least one CIDR, each a network address (10.1.0.0/16, not 10.1.2.3/16), no overlaps."""
    if not pod_cidrs:
        raise RenderError("give the cell's pod CIDR (--pod-cidr), e.g. 10.1.0.0/16")
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for text in pod_cidrs:
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as e:
            raise RenderError(f"pod CIDR {text!r} is not a network address: {e}") from e
        for other in networks:
            if network.overlaps(other):
                raise RenderError(f"pod CIDRs {other} and {network} overlap")
        networks.append(network)


def find_deploy_dir(explicit: Path | None = None) -> Path:
    """The deploy/ directory holding ``base/kustomization.yaml`` (see the module docstring)."""
    candidates: list[tuple[str, Path]] = []
    if explicit is not None:
        candidates.append(("--deploy-dir", explicit.expanduser()))
    elif os.environ.get(DEPLOY_DIR_ENV):
        candidates.append((f"${DEPLOY_DIR_ENV}", Path(os.environ[DEPLOY_DIR_ENV]).expanduser()))
    else:
        candidates.append(("the source checkout", Path(__file__).resolve().parents[2] / "deploy"))
        candidates.append(
            ("the installed data", Path(sys.prefix) / "share" / "cellmesh" / "deploy")
        )
    for _, path in candidates:
        if (path / "base" / "kustomization.yaml").is_file():
            return path
    tried = "; ".join(f"{where}: {path}" for where, path in candidates)
    raise RenderError(f"deploy/ (with base/kustomization.yaml) not found ({tried})")


def _config_map(spec: CellSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "cellmesh-config",
            "namespace": NAMESPACE,
            "labels": {PART_OF_LABEL[0]: PART_OF_LABEL[1]},
        },
        "data": {"cell": spec.cell, "cell-id": str(spec.cell_id), "pod-cidr": spec.pod_cidrs[0]},
    }


def _patches(spec: CellSpec, base_args: Sequence[str]) -> list[dict[str, Any]]:
    patches: list[dict[str, Any]] = []
    if len(spec.pod_cidrs) > 1:
        extra = [f"--pod-cidr={cidr}" for cidr in spec.pod_cidrs[1:]]
        patches.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "cellmesh-meshapi", "namespace": NAMESPACE},
                "spec": {
                    "template": {
                        "spec": {"containers": [{"name": "meshapi", "args": [*base_args, *extra]}]}
                    }
                },
            }
        )
    if spec.service_annotations:
        patches.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "cellmesh-meshapi",
                    "namespace": NAMESPACE,
                    "annotations": dict(spec.service_annotations),
                },
            }
        )
    return patches


def _meshapi_args(deploy_dir: Path) -> list[str]:
    """The base's meshapi args (a patch replaces the whole list, so it starts from these)."""
    path = deploy_dir / "base" / "meshapi-deployment.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
        containers = doc["spec"]["template"]["spec"]["containers"]
        meshapi = next(c for c in containers if c.get("name") == "meshapi")
        return [str(a) for a in meshapi["args"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError, StopIteration) as e:
        raise RenderError(f"{path}: no meshapi container with args ({e})") from e


def write_overlay(spec: CellSpec, *, deploy_dir: Path, out_dir: Path) -> Path:
    """Write the cell's overlay into ``out_dir`` (referencing deploy/base); returns ``out_dir``."""
    base = os.path.relpath(deploy_dir.resolve() / "base", out_dir.resolve())
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "bases": [base],
        "resources": ["config.yaml"],
    }
    (out_dir / "config.yaml").write_text(yaml.safe_dump(_config_map(spec), sort_keys=False))
    patches = _patches(spec, _meshapi_args(deploy_dir))
    if patches:
        names = []
        for i, patch in enumerate(patches):
            name = f"patch-{i}.yaml"
            (out_dir / name).write_text(yaml.safe_dump(patch, sort_keys=False))
            names.append(name)
        kustomization["patchesStrategicMerge"] = names
    (out_dir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return out_dir


def kustomize(directory: Path, *, kubectl: str = "kubectl") -> list[dict[str, Any]]:
    """``kubectl kustomize DIRECTORY`` as a list of objects."""
    exe = shutil.which(kubectl)
    if exe is None:
        raise RenderError(
            f"{kubectl} not found on PATH; it renders deploy/ (`make setup` installs it; "
            "Debian: apt-get install kubernetes-client)"
        )
    try:
        done = subprocess.run(
            [exe, "kustomize", str(directory)],
            capture_output=True,
            text=True,
            timeout=_KUSTOMIZE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RenderError(f"{kubectl} kustomize {directory} failed: {e}") from e
    if done.returncode != 0:
        raise RenderError(
            f"{kubectl} kustomize {directory} failed (exit {done.returncode}): "
            f"{done.stderr.strip()[-600:]}"
        )
    try:
        docs = [d for d in yaml.safe_load_all(done.stdout) if d is not None]
    except yaml.YAMLError as e:
        raise RenderError(f"{kubectl} kustomize {directory} printed invalid YAML: {e}") from e
    if not all(isinstance(d, dict) for d in docs):
        raise RenderError(f"{kubectl} kustomize {directory} printed a non-object document")
    return docs


def render_cell(
    spec: CellSpec, *, deploy_dir: Path | None = None, kubectl: str = "kubectl"
) -> list[dict[str, Any]]:
    """The cell's objects (without the TLS Secrets), in apply order."""
    root = find_deploy_dir(deploy_dir)
    with tempfile.TemporaryDirectory(prefix="cellmesh-overlay-") as tmp:
        objects = kustomize(
            write_overlay(spec, deploy_dir=root, out_dir=Path(tmp)), kubectl=kubectl
        )
    return apply_order(objects)


def apply_order(objects: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``objects`` sorted by ``APPLY_ORDER`` (stable); a kind outside it is a ``RenderError``."""
    rank = {kind: i for i, kind in enumerate(APPLY_ORDER)}
    for obj in objects:
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key not in rank:
            name = (obj.get("metadata") or {}).get("name")
            raise RenderError(
                f"deploy/ renders {key[1]} {name} ({key[0]}), which install does not know how "
                "to order; add it to APPLY_ORDER"
            )
    return sorted(objects, key=lambda o: rank[(o["apiVersion"], o["kind"])])
