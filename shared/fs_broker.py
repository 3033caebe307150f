"""The embedded broker: kombu's filesystem transport, with messages that appear whole.

kombu writes a message file in place, while a consumer may already be moving it
away and reading it; a consumer that wins that race reads an empty file and the
message is lost. Here the message is written under a name no consumer looks at
and renamed into the queue once complete (a rename is atomic on one filesystem).
"""

from __future__ import annotations

import json
import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem

ALIAS = "intelfs"
MAX_DRAIN_SECONDS = 0.25


class AtomicChannel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = f"{final}.part"  # `<queue>.msg.part`: not a name consumers take
        with open(partial, "wb") as out:
            out.write(json.dumps(payload).encode())
        os.replace(partial, final)


class AtomicTransport(filesystem.Transport):
    Channel = AtomicChannel

    def drain_events(self, connection: Any, timeout: Any = None) -> Any:  # type: ignore[override]
        # Celery's loop for polling transports drains for up to 2 s at a time and looks
        # for a shutdown only between drains, so Ctrl-C took seconds per stage to land.
        # Shorter drains cost a loop turn a quarter second and let a worker stop at once.
        if timeout is not None:
            timeout = min(timeout, MAX_DRAIN_SECONDS)
        return super().drain_events(connection, timeout=timeout)  # type: ignore[no-untyped-call]


TRANSPORT_ALIASES[ALIAS] = f"{__name__}:AtomicTransport"
