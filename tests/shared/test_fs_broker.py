"""The embedded broker: a consumer hears a message when it lands, and still finds one
whose ring was lost."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import kombu.connection
import kombu.entity
import pytest

from shared import fs_broker
from shared.queue import broker_options
from shared.settings import Settings

# kombu has no type hints: its two classes are used as what they are, untyped.
Connection: Any = kombu.connection.Connection
Queue: Any = kombu.entity.Queue
# Far longer than any test waits: only a ring can wake a consumer that holds its bell.
NEVER = 600.0


class Consumer:
    """A kombu consumer of queue `name` on the folder broker, draining in a thread."""

    def __init__(self, settings: Settings, name: str) -> None:
        url, options = broker_options(settings)
        self.settings = settings
        self.connection = Connection(url, transport_options=options)
        self.queue = Queue(name, routing_key=name)
        self.received: list[Any] = []
        self.heard = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def __enter__(self) -> Consumer:
        self.connection.Consumer(self.queue, callbacks=[self._got], accept=["json"]).consume()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop = True
        publish(self.settings, self.queue.name, {"stop": True})  # wakes the drain
        self._thread.join(timeout=10)
        self.connection.release()

    def _got(self, body: Any, message: Any) -> None:
        message.ack()
        if body != {"stop": True}:
            self.received.append(body)
            self.heard.set()

    def _drain(self) -> None:
        while not self._stop:
            try:
                self.connection.drain_events(timeout=NEVER)
            except TimeoutError:
                continue


def publish(settings: Settings, name: str, body: dict[str, Any]) -> None:
    url, options = broker_options(settings)
    with Connection(url, transport_options=options) as connection:
        connection.Producer().publish(
            body, routing_key=name, declare=[Queue(name, routing_key=name)]
        )


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    # A drain that ends looks at the folder again: here none ends before a message comes.
    monkeypatch.setattr(fs_broker, "MAX_DRAIN_SECONDS", NEVER)
    return Settings(data_dir=tmp_path)


def test_a_consumer_that_holds_its_bell_hears_a_message_when_it_lands(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fs_broker, "BELL_POLL_SECONDS", NEVER)
    with Consumer(settings, "rung") as consumer:
        time.sleep(0.3)  # waiting on its bell by now
        publish(settings, "rung", {"job": 1})
        assert consumer.heard.wait(30), "only the folder's next read (in 10 minutes) found it"
    assert consumer.received == [{"job": 1}]


def test_a_message_whose_ring_was_lost_is_found_by_the_next_read(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fs_broker, "ring", lambda address: None)  # every ring lost
    with Consumer(settings, "unrung") as consumer:
        time.sleep(0.3)
        publish(settings, "unrung", {"job": 2})
        assert consumer.heard.wait(30)
    assert consumer.received == [{"job": 2}]


def test_a_consumer_whose_bell_another_holds_polls_the_folder(settings: Settings) -> None:
    folder = str(settings.broker_folder / "queue")
    other = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    other.bind(fs_broker.bell_address(folder, "taken"))  # another consumer of the queue
    try:
        with Consumer(settings, "taken") as consumer:
            time.sleep(0.3)
            publish(settings, "taken", {"job": 3})
            assert consumer.heard.wait(30)
        assert consumer.received == [{"job": 3}]
        assert other.recv(16) == b"1"  # the ring went to the bell's holder
    finally:
        other.close()


def test_a_message_appears_whole(settings: Settings) -> None:
    publish(settings, "whole", {"job": 4})
    folder = settings.broker_folder / "queue"
    names = [path.name for path in folder.iterdir()]
    assert len(names) == 1  # no partial file left
    assert names[0].endswith(".whole.msg")
    assert json.loads((folder / names[0]).read_text())["body"]
