"""The embedded broker: kombu's filesystem transport, with messages that appear whole
and consumers woken when one lands.

kombu writes a message file in place, while a consumer may already be moving it
away and reading it; a consumer that wins that race reads an empty file and the
message is lost. Here the message is written under a name no consumer looks at
and renamed into the queue once complete (a rename is atomic on one filesystem).

kombu's consumers look at the folder every `polling_interval` (5 ms here): an
idle /predict call waited half of that on average before its worker heard of
it, and every idle consumer woke 200 times a second. Here each message also
rings a bell, a datagram to a Unix socket named after the folder and the queue
(in Linux's abstract namespace, as `shared.finished` does). A consumer that
holds the bell of its queues waits on it between looks, and looks again at once
when it rings; the folder is still read every BELL_POLL_SECONDS, so a lost ring
costs time, never a message. A consumer that cannot hold a bell (another one of
the same queue on this folder holds it, or no abstract sockets) polls as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import threading
import uuid
from functools import cache
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem

from shared import datagrams

ALIAS = "intelfs"
MAX_DRAIN_SECONDS = 0.25
# A consumer that holds its bell still reads the folder this often.
BELL_POLL_SECONDS = 0.1


@cache
def bell_address(folder: str, queue: str) -> str:
    return datagrams.address("broker", os.path.realpath(folder), queue)


class Bells:
    """The bells this process holds (one per queue it consumes), and how to wait on them."""

    def __init__(self) -> None:
        self._held: dict[str, socket.socket | None] = {}  # address -> socket (None: not ours)
        self._lock = threading.Lock()

    def hold(self, address: str) -> bool:
        with self._lock:
            if address not in self._held:
                # None where another consumer of this queue holds it: this one polls.
                bell = datagrams.bound(address)
                if bell is not None:
                    bell.setblocking(False)
                self._held[address] = bell
            return self._held[address] is not None

    def wait(self, addresses: list[str], seconds: float) -> None:
        """Until one of the bells rings or `seconds` pass; the rings heard are cleared."""
        sockets = [s for a in addresses if (s := self._held.get(a)) is not None]
        if not sockets:
            return
        ready, _, _ = select.select(sockets, [], [], seconds)
        for rung in ready:
            with contextlib.suppress(OSError):
                while True:
                    rung.recv(16)


BELLS = Bells()


def ring(address: str) -> None:
    # Nobody holds it (no consumer yet, or one that polls), or its buffer is full of
    # rings not yet heard: the folder is read anyway.
    datagrams.send(address, b"1")


class AtomicChannel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = f"{final}.part"  # `<queue>.msg.part`: not a name consumers take
        with open(partial, "wb") as out:
            out.write(json.dumps(payload).encode())
        os.replace(partial, final)
        ring(bell_address(self.data_folder_out, queue))


class AtomicTransport(filesystem.Transport):
    Channel = AtomicChannel

    def drain_events(self, connection: Any, timeout: Any = None) -> Any:  # type: ignore[override]
        # Celery's loop for polling transports drains for up to 2 s at a time and looks
        # for a shutdown only between drains, so Ctrl-C took seconds per stage to land.
        # Shorter drains cost a loop turn a quarter second and let a worker stop at once.
        if timeout is not None:
            timeout = min(timeout, MAX_DRAIN_SECONDS)
        started = monotonic()
        while True:
            bells = self._bells()  # held before the look: a ring after it is not missed
            try:
                self._cycle().get(self._deliver, timeout=timeout)
                return
            except Empty:
                left = None if timeout is None else timeout - (monotonic() - started)
                if left is not None and left <= 0:
                    raise TimeoutError() from None
                pause = BELL_POLL_SECONDS if bells else (self.polling_interval or 0.0)
                pause = pause if left is None else min(left, pause)
                if bells:
                    BELLS.wait(bells, pause)
                else:
                    select.select([], [], [], pause)

    def _cycle(self) -> Any:
        assert self.cycle is not None  # set up with the transport's first channel
        return self.cycle

    def _bells(self) -> list[str]:
        """The bells of every queue this transport consumes, if it holds them all."""
        addresses = [
            bell_address(channel.data_folder_in, queue)
            for channel in self.channels
            for queue in channel._active_queues
        ]
        if addresses and all(BELLS.hold(address) for address in addresses):
            return addresses
        return []


TRANSPORT_ALIASES[ALIAS] = f"{__name__}:AtomicTransport"
