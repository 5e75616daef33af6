"""Peer records' directions (``watch``, ``export``): optional, defaulting to both (issue 11, #8)."""

from __future__ import annotations

import pytest

from meshcore.model import Peer, RecordError, decode_record, encode_record, peer_key


def test_a_peer_record_written_before_the_directions_existed_is_bidirectional() -> None:
    old = b'{"address":"127.0.0.1:1","cell":"alpha","id":2,"name":"beta","tls_server_name":null}'
    record = decode_record(peer_key("alpha", "beta"), old)
    assert isinstance(record, Peer)
    assert (record.watch, record.export) == (True, True)


def test_a_grant_round_trips() -> None:
    grant = Peer(cell="beta", name="alpha", id=1, address="127.0.0.1:1", watch=False)
    assert decode_record(grant.key(), encode_record(grant)) == grant


def test_a_peer_neither_watched_nor_exported_to_is_refused() -> None:
    value = (
        b'{"address":"127.0.0.1:1","cell":"alpha","id":2,"name":"beta",'
        b'"watch":false,"export":false}'
    )
    with pytest.raises(RecordError, match="neither watched nor exported to"):
        decode_record(peer_key("alpha", "beta"), value)
