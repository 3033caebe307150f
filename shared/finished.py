"""Word that a job ended, from the worker that ended it to the API process waiting on it.

A `/predict` call waits for its job; instead of polling the database it is woken
when the job ends. With Redis the word goes by pub/sub (every API process on
every host hears it); on the embedded defaults, where API and workers share one
host by design, by a datagram to a Unix socket named after the broker's folder
(in Linux's abstract namespace: no file to leave behind, no path length limit). The word
is only a hint: a waiter still looks at the database now and then, so a lost
one costs time, never a result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from shared import datagrams
from shared.settings import Settings

log = logging.getLogger(__name__)

CHANNEL = "intel:finished"
Listener = Callable[[str], None]


def socket_address(settings: Settings) -> str:
    return datagrams.address("finished", str(settings.broker_folder.resolve()))


class FinishedAnnouncer:
    """The sending side, used by the outbox after a commit that ended jobs."""

    def __init__(self, settings: Settings) -> None:
        self.redis_url = settings.redis_url
        self.address = socket_address(settings)
        self._client: redis.Redis | None = None

    def announce(self, job_ids: list[str]) -> None:
        if self.redis_url:
            if self._client is None:
                self._client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
            pipe = self._client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.publish(CHANNEL, job_id)
            pipe.execute()
            return
        for job_id in job_ids:
            # Nobody listening (no API yet), or its buffer full: the waiter polls.
            datagrams.send(self.address, job_id.encode())


def listen(settings: Settings, heard: Listener) -> None:
    """Call `heard(job_id)` from a daemon thread for every job said to have ended."""
    target = _listen_redis if settings.redis_url else _listen_socket
    threading.Thread(target=target, args=(settings, heard), name="finished", daemon=True).start()


def _listen_redis(settings: Settings, heard: Listener) -> None:
    assert settings.redis_url
    while True:
        try:
            client = redis.Redis.from_url(settings.redis_url, socket_timeout=None)
            subscription = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            subscription.subscribe(CHANNEL)
            for message in subscription.listen():
                data = message.get("data")
                if isinstance(data, bytes):
                    heard(data.decode())
        except Exception:  # Redis went away: waiters poll meanwhile
            log.warning("listening for finished jobs failed; again in 1s", exc_info=True)
            time.sleep(1)


def _listen_socket(settings: Settings, heard: Listener) -> None:
    receiver = datagrams.bound(socket_address(settings))
    if receiver is None:  # another API process on this folder listens: this one polls
        log.warning("another API process hears finished jobs here; this one polls")
        return
    while True:
        try:
            data = receiver.recv(256)
            heard(data.decode(errors="replace"))
        except Exception:
            log.warning("listening for finished jobs failed", exc_info=True)
            time.sleep(1)
