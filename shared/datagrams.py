"""Hints between the processes of one host: datagrams to Unix sockets in Linux's
abstract namespace (no file to leave behind, no path length limit).

A hint may be lost (nobody bound yet, a full buffer, no abstract sockets): whoever
waits on one also looks for itself now and then, so a lost one costs time only.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading


def address(kind: str, *parts: str) -> str:
    """The address for `kind` named after `parts` (a folder, a queue): one per host and set."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    return f"\0intel-classifier-{kind}-{digest}"


def bound(at: str) -> socket.socket | None:
    """A socket receiving at `at`, or None where another process already does."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        receiver.bind(at)
    except OSError:
        receiver.close()
        return None
    return receiver


_senders = threading.local()


def send(to: str, data: bytes) -> None:
    """Send `data` to `to` if it can go at once; a hint that cannot is dropped."""
    sender = getattr(_senders, "socket", None)
    if sender is None:
        sender = _senders.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.setblocking(False)
    with contextlib.suppress(OSError):
        sender.sendto(data, to)
