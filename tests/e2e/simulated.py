"""A simulated mesh for the suite's own tests: a driver and an admin with no traffic at all.

Pods and services live in dictionaries; a client run (``exec`` of ``e2e.client``) is answered by
what an ideal datapath would do: a pod address answers itself, a VIP is looked up in the client's
cell and its backends are chosen by the real merge (``nodeagent.merge.merge_service``) over every
cell's service and endpoints, then the attempts are spread round-robin over them. ``faults``
switch on one bug at a time, so that the suite's failure details can be checked.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address

from e2e.driver import ExecResult, Pod, PodSpec
from meshcore.model import (
    Affinity,
    Endpoint,
    EndpointPort,
    Service,
    load_manifests,
    service_from_manifest,
    service_ref_from_manifest,
)
from nodeagent.merge import CellSource, ServiceRef, merge_service


@dataclass
class SimPod:
    pod: Pod
    spec: PodSpec
    ready: bool


@dataclass
class SimulatedMesh:
    topology: dict[str, list[str]] = field(
        default_factory=lambda: {"alpha": ["a1", "a2"], "beta": ["b1"]}
    )
    faults: set[str] = field(default_factory=set)  # "ignore-affinity", "leak-unshared"
    pods: dict[tuple[str, str], SimPod] = field(default_factory=dict)
    services: dict[tuple[str, str], Service] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    meshapi_down: set[str] = field(default_factory=set)

    # --- MeshDriver ---------------------------------------------------------------------------

    def cells(self) -> list[str]:
        return list(self.topology)

    def nodes(self, cell: str) -> list[str]:
        return self.topology[cell]

    def context(self, cell: str) -> str:
        return f"lab-{cell}"

    def config_path(self) -> str:
        return "/nonexistent/meshctl.json"

    def python(self) -> str:
        return sys.executable

    def add_pod(self, spec: PodSpec) -> Pod:
        assert (spec.cell, spec.name) not in self.pods, f"pod {spec.name} exists"
        cell_index = self.cells().index(spec.cell) + 1
        pod = Pod(spec.cell, spec.node, spec.name, f"10.{cell_index}.0.{len(self.pods) + 2}")
        self.pods[spec.cell, spec.name] = SimPod(pod, spec, spec.ready)
        self.calls.append(f"add {spec.cell}/{spec.name}")
        return pod

    def set_ready(self, cell: str, node: str, name: str, ready: bool) -> None:
        self.pods[cell, name].ready = ready

    def delete_pod(self, cell: str, node: str, name: str) -> None:
        if self.pods.pop((cell, name), None) is not None:
            self.calls.append(f"delete {cell}/{name}")

    def stop_meshapi(self, cell: str) -> None:
        self.meshapi_down.add(cell)
        self.calls.append(f"stop-meshapi {cell}")

    def start_meshapi(self, cell: str) -> None:
        self.meshapi_down.discard(cell)
        self.calls.append(f"start-meshapi {cell}")

    def restart_agent(self, cell: str, node: str) -> None:
        self.calls.append(f"restart-agent {cell}/{node}")

    def exec(
        self, cell: str, node: str, pod: str, argv: Sequence[str], *, timeout: float = 30.0
    ) -> ExecResult:
        assert list(argv[:3]) == [sys.executable, "-m", "e2e.client"], argv
        protocol, host, port = argv[3], argv[4], int(argv[5])
        count = int(argv[argv.index("--count") + 1])
        if "--duration" in argv:
            time.sleep(float(argv[argv.index("--duration") + 1]))  # a client loop takes time
            count = 50
        answers = self._answer(cell, protocol, host, port)
        replies: Counter[str] = Counter()
        for i in range(count):
            if answers:
                p = answers[i % len(answers)]
                replies[f"{p.cell} {p.node} {p.name}"] += 1
        errors = {} if answers else {"connect: connection refused": count}
        line = json.dumps({"replies": replies, "failures": sum(errors.values()), "errors": errors})
        return ExecResult(0 if answers else 1, line + "\n", "")

    # --- ServiceAdmin -------------------------------------------------------------------------

    def apply(self, cell: str, manifest: str) -> None:
        [doc] = load_manifests(manifest, source="sim")
        service = service_from_manifest(doc, cell=cell)
        self.services[cell, service.name] = service

    def delete(self, cell: str, manifest: str) -> None:
        [doc] = load_manifests(manifest, source="sim")
        _, name = service_ref_from_manifest(doc, source="sim")
        self.services.pop((cell, name), None)

    def list_services(self, cell: str) -> list[Service]:
        return [s for (c, _), s in self.services.items() if c == cell]

    def endpoints(self, cell: str) -> list[Endpoint]:
        return [
            Endpoint(
                cell=cell,
                namespace=namespace,
                service=service,
                address=ip_address(sim.pod.address),
                node=sim.pod.node,
                ports=[
                    EndpointPort(name=p.name, port=p.port, protocol=p.protocol)
                    for p in sim.spec.ports
                ],
                ready=sim.ready,
            )
            for (c, _), sim in self.pods.items()
            if c == cell
            for namespace, service in sim.spec.services
        ]

    # --- the ideal datapath -------------------------------------------------------------------

    def _answer(self, cell: str, protocol: str, host: str, port: int) -> list[Pod]:
        for sim in self.pods.values():
            if sim.pod.address == host:
                return [sim.pod]
        local = next(
            (
                s
                for (c, _), s in self.services.items()
                if c == cell and any(str(f.vip) == host for f in s.frontends)
            ),
            None,
        )
        if local is None:
            return []
        ref = ServiceRef(local.namespace, local.name)
        sources = {}
        for index, name in enumerate(self.cells()):
            service = self.services.get((name, local.name))
            if service is not None and "leak-unshared" in self.faults:
                service = service.model_copy(update={"shared": True})
            if name == cell and "ignore-affinity" in self.faults:
                service = local.model_copy(update={"affinity": Affinity.NONE})
            sources[name] = CellSource(
                cell=name,
                cell_id=index + 1,
                local=name == cell,
                service=service,
                endpoints={
                    str(ep.address): ep
                    for ep in self.endpoints(name)
                    if (ep.namespace, ep.service) == ref
                },
            )
        merged = merge_service(ref, sources)
        assert merged is not None
        by_address = {sim.pod.address: sim.pod for sim in self.pods.values()}
        for frontend in merged.frontends:
            f = frontend.frontend
            if str(f.vip) == host and f.port == port and f.protocol == protocol.upper():
                return [by_address[str(b.address)] for b in frontend.backends]
        return []


@dataclass
class SimulatedAdmin:
    """The ``ServiceAdmin`` face of a ``SimulatedMesh``."""

    mesh: SimulatedMesh

    def apply(self, cell: str, manifest: str) -> None:
        self.mesh.apply(cell, manifest)

    def delete(self, cell: str, manifest: str) -> None:
        self.mesh.delete(cell, manifest)

    def services(self, cell: str) -> list[Service]:
        return self.mesh.list_services(cell)

    def endpoints(self, cell: str) -> list[Endpoint]:
        return self.mesh.endpoints(cell)
