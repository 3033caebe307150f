"""Hints between processes of one host: one receiver per address, lost hints are dropped."""

from __future__ import annotations

from shared import datagrams
from shared.db.models import new_id


def test_an_address_has_one_receiver_and_a_hint_reaches_it() -> None:
    at = datagrams.address("test", new_id())
    receiver = datagrams.bound(at)
    assert receiver is not None
    try:
        assert datagrams.bound(at) is None  # a second process would poll instead
        datagrams.send(at, b"job-1")
        assert receiver.recv(16) == b"job-1"
    finally:
        receiver.close()


def test_a_hint_nobody_receives_is_dropped() -> None:
    datagrams.send(datagrams.address("test", new_id()), b"lost")  # raises nothing
