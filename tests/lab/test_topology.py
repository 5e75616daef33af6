"""The lab's names and addresses (pure): the plan, and recognizing a lab's objects by name."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from meshctl.lab.topology import (
    TopologyError,
    next_pod_host,
    owns_cgroup,
    owns_netns,
    owns_pin,
    plan_lab,
)


def test_plan_follows_the_address_scheme() -> None:
    plan = plan_lab("lab", cells=3, nodes=2, pods_per_node=2)
    assert [(c.name, c.id, str(c.pod_cidr), str(c.node_cidr)) for c in plan.cells] == [
        ("alpha", 1, "10.1.0.0/16", "192.168.1.0/24"),
        ("beta", 2, "10.2.0.0/16", "192.168.2.0/24"),
        ("gamma", 3, "10.3.0.0/16", "192.168.3.0/24"),
    ]
    gamma1 = plan.nodes[-1]
    assert (gamma1.cell, gamma1.name, gamma1.netns) == ("gamma", "node1", "cml-lab-gamma-node1")
    assert gamma1.address == IPv4Address("192.168.3.11")
    assert gamma1.pod_cidr == IPv4Network("10.3.2.0/24")
    assert gamma1.gateway == IPv4Address("10.3.2.1")
    assert gamma1.cgroup_name == "cellmesh-lab-lab-gamma-node1"
    assert gamma1.pin_instance == "lab-gamma-node1"
    last = plan.pods[-1]
    assert (last.name, last.address, last.netns) == (
        "echo-1-1",
        IPv4Address("10.3.2.11"),
        "cml-lab-gamma-node1-11",
    )
    assert plan.underlay_netns == "cml-lab-ul"
    assert plan.context("beta") == "lab-beta"


def test_the_largest_lab_keeps_interface_names_short() -> None:
    plan = plan_lab("a" * 16, cells=20, nodes=20, pods_per_node=50)
    assert len(plan.cells) == 20
    assert len(plan.nodes) == 400
    assert len(plan.pods) == 20_000
    assert max(len(node.underlay_veth) for node in plan.nodes) <= 15
    assert max(len(pod.veth) for pod in plan.pods) <= 15
    assert plan.nodes[-1].address == IPv4Address("192.168.20.29")
    assert plan.pods[-1].address == IPv4Address("10.20.20.59")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"cells": 0}, "cells must be 1..20", id="no-cells"),
        pytest.param({"cells": 21}, "cells must be 1..20", id="too-many-cells"),
        pytest.param({"nodes": 0}, "nodes must be 1..20", id="no-nodes"),
        pytest.param({"pods_per_node": 51}, "pods per node must be 0..50", id="too-many-pods"),
        pytest.param({"name": "-lab"}, "not a DNS label", id="name-dash"),
        pytest.param({"name": "x" * 17}, "at most 16", id="name-long"),
    ],
)
def test_plan_refuses_out_of_range(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"name": "lab", "cells": 1, "nodes": 1, "pods_per_node": 0}
    args.update(kwargs)
    with pytest.raises(TopologyError, match=message):
        plan_lab(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lab", "name", "owned"),
    [
        pytest.param("lab", "cml-lab-ul", True, id="underlay"),
        pytest.param("lab", "cml-lab-alpha-node0", True, id="node"),
        pytest.param("lab", "cml-lab-beta-node19-59", True, id="pod"),
        pytest.param("lab", "cml-lab-x-ul", False, id="other-lab-underlay"),
        pytest.param("lab", "cml-lab-alpha-ul", False, id="lab-alpha-underlay"),
        pytest.param("lab", "cml-lab-alpha-alpha-node0", False, id="lab-alpha-node"),
        pytest.param("lab", "cml-lab-alpha-node0-ul", False, id="lab-alpha-node0-underlay"),
        pytest.param("lab", "cml-lab-alpha-node0-alpha-node0-10", False, id="nested-pod"),
        pytest.param("lab", "cmtest-1234", False, id="test-namespace"),
    ],
)
def test_a_lab_owns_only_its_own_namespaces(lab: str, name: str, owned: bool) -> None:
    assert owns_netns(lab, name) is owned


def test_a_lab_owns_only_its_own_cgroups_and_pins() -> None:
    assert owns_cgroup("lab", "cellmesh-lab-lab-alpha-node0")
    assert not owns_cgroup("lab", "cellmesh-lab-lab-alpha-alpha-node0")
    assert not owns_cgroup("lab", "cellmesh-test-0123456789")
    assert owns_pin("lab", "lab-beta-node3")
    assert not owns_pin("lab", "lab-beta-beta-node3")
    assert not owns_pin("test", "test-0123456789")


def test_next_pod_host_fills_gaps_from_10() -> None:
    assert next_pod_host(set()) == 10
    assert next_pod_host({10, 11, 13}) == 12
    assert next_pod_host(set(range(10, 255))) == 2
    with pytest.raises(TopologyError, match="full"):
        next_pod_host(set(range(2, 255)))
