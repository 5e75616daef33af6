"""`LabPodRuntime`: realises the Kubernetes driver's pods in a lab with ``--source kubernetes``.

The Kubernetes driver (``meshctl.kube.driver.KubeDriver``) creates Pods and publishes their
EndpointSlices through the cells' API doubles itself; what no API server can do here — make the
pod's network namespace, veth and echo server, exec in it, stop and start the control plane — it
asks of a ``PodRuntime``. This one is the lab's: every call goes to `LabDriver` (the same code
as the plain lab's suite driver, recorded in the lab's state, removed by ``lab down``), with no
service registrations (the driver's EndpointSlices are the pod's endpoints).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from e2e.driver import ExecResult, PodSpec, PortSpec
from meshctl.lab.driver import LabDriver
from meshctl.lab.state import STATE_ROOT, StateError, load_state

__all__ = ["LabPodRuntime", "NotKubernetesLab", "find_lab_for_context"]


class NotKubernetesLab(StateError):
    """The lab exists but was not brought up with ``--source kubernetes``."""


class LabPodRuntime:
    """The pods, exec and control plane of lab ``lab`` (implements ``PodRuntime``)."""

    def __init__(self, lab: str, config_path: Path) -> None:
        self._driver = LabDriver(lab, config_path)
        state = self._driver.state()
        if state.source != "kubernetes" or state.kubeconfig is None:
            raise NotKubernetesLab(
                f"lab {lab!r} runs with --source {state.source}, not kubernetes: bring it up "
                f"with 'meshctl lab up --name {lab} --source kubernetes'"
            )
        self.lab = lab
        self._kubeconfig = Path(state.kubeconfig)

    def kube_context(self, cell: str) -> str:
        return self._driver.context(cell)

    def kubeconfig(self) -> Path:
        return self._kubeconfig

    def cells(self) -> list[str]:
        return self._driver.cells()

    def nodes(self, cell: str) -> list[str]:
        return self._driver.nodes(cell)

    def run_pod(self, cell: str, node: str, name: str, ports: Sequence[PortSpec]) -> str:
        """Make the pod (namespace, veth, echo server on its ports); returns its IPv4 address."""
        spec = PodSpec(cell=cell, node=node, name=name, services=(), ports=tuple(ports))
        return self._driver.add_pod(spec).address

    def remove_pod(self, cell: str, node: str, name: str) -> None:
        self._driver.delete_pod(cell, node, name)  # idempotent: a missing pod is no error

    def exec(
        self, cell: str, node: str, pod: str, argv: Sequence[str], *, timeout: float = 30.0
    ) -> ExecResult:
        return self._driver.exec(cell, node, pod, argv, timeout=timeout)

    def python(self) -> str:
        return self._driver.python()

    def stop_meshapi(self, cell: str) -> None:
        self._driver.stop_meshapi(cell)

    def start_meshapi(self, cell: str) -> None:
        self._driver.start_meshapi(cell)

    def restart_agent(self, cell: str, node: str) -> None:
        self._driver.restart_agent(cell, node)


def find_lab_for_context(kube_context: str) -> str | None:
    """The lab (with ``--source kubernetes``) whose kubeconfig has ``kube_context``, if any.

    Its contexts are named ``<lab>-<cell>`` like its meshctl contexts; the lab's state confirms.
    """
    if not STATE_ROOT.is_dir():
        return None
    for entry in sorted(STATE_ROOT.iterdir()):
        try:
            state = load_state(entry.name)
        except StateError:
            continue
        if state.source == "kubernetes" and any(c.context == kube_context for c in state.cells):
            return state.name
    return None
