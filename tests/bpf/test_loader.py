"""Load, attach, re-attach and unpin the real socket LB in a cgroup the test created."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpf.layout import MAP_NAMES, PROGRAMS
from bpf.loader import LoaderError, SockLbLoader
from tests.bpf.conftest import attachments


def test_attach_pins_maps_and_links(loader: SockLbLoader, cgroup: Path) -> None:
    loader.attach(cgroup)
    assert sorted(attachments(cgroup)) == sorted(p.attach_name for p in PROGRAMS)
    assert sorted(p.name for p in loader.maps_dir.iterdir()) == sorted(MAP_NAMES)
    assert sorted(p.name for p in loader.links_dir.iterdir()) == sorted(p.name for p in PROGRAMS)


def test_pins_survive_the_loader_and_a_second_start_does_not_duplicate(
    sock_lb_object: Path, instance: str, cgroup: Path
) -> None:
    first = SockLbLoader(object_path=sock_lb_object, instance=instance)
    second = SockLbLoader(object_path=sock_lb_object, instance=instance)
    try:
        first.attach(cgroup)
        first.close()  # the "agent" exits: the datapath stays
        assert sorted(attachments(cgroup)) == sorted(p.attach_name for p in PROGRAMS)
        second.attach(cgroup)  # a restarted agent reuses the pins
        assert sorted(attachments(cgroup)) == sorted(p.attach_name for p in PROGRAMS)
        second.close()
    finally:
        second.unpin()
    assert attachments(cgroup) == []
    assert not second.root.exists()


def test_missing_object_is_a_clear_error(tmp_path: Path, instance: str) -> None:
    with pytest.raises(LoaderError, match="no such BPF object"):
        SockLbLoader(object_path=tmp_path / "nope.o", instance=instance).load()
