"""`Client`: the service's HTTP API as Python calls."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from client.models import ItemResult, Job
from client.packing import Part, pack

DEFAULT_URL = "http://127.0.0.1:9696"


class ClientError(Exception):
    """The service refused a request; `message` is its own words, `url` what was asked."""

    def __init__(self, status: int, code: str, message: str, url: str = "") -> None:
        super().__init__(f"{message} (HTTP {status}, {code}{', ' + url if url else ''})")
        self.status = status
        self.code = code
        self.message = message
        self.url = url


class _Counting:
    """A file that reports how much of it has been read (sent)."""

    def __init__(self, stream: IO[bytes], on_read: Callable[[int], None]) -> None:
        self.stream = stream
        self.on_read = on_read

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        self.on_read(len(chunk))
        return chunk


class Client:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def submit(
        self,
        paths: Sequence[str | Path] | str | Path,
        *,
        webhook_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        on_upload: Callable[[int, int], None] | None = None,
    ) -> Job:
        """Upload images, folders (zipped on the fly) or zips as one job.

        `on_upload(sent, total)` follows the upload, byte by byte.
        """
        if isinstance(paths, str | Path):
            paths = [paths]
        parts = pack([Path(p) for p in paths])
        total = sum(part.size for part in parts)
        sent = 0

        def count(size: int) -> None:
            nonlocal sent
            sent += size
            if on_upload is not None:
                on_upload(sent, total)

        data: dict[str, str] = {}
        if webhook_url:
            data["webhook_url"] = webhook_url
        if metadata is not None:
            data["metadata"] = json.dumps(metadata)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        try:
            response = self.http.post(
                "/jobs", files=self._files(parts, count), data=data, headers=headers
            )
        finally:
            for part in parts:
                part.stream.close()
        return Job.from_json(self._json(response))

    def submit_references(
        self,
        inputs: Sequence[dict[str, str]],
        *,
        webhook_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """A job of inputs by reference, `[{"custom_id": ..., "url": "https://… or s3://…"}]`,
        which the service's workers fetch."""
        body: dict[str, Any] = {"inputs": list(inputs)}
        if webhook_url:
            body["webhook_url"] = webhook_url
        if metadata is not None:
            body["metadata"] = metadata
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Job.from_json(self._json(self.http.post("/jobs", json=body, headers=headers)))

    @staticmethod
    def _files(parts: list[Part], count: Callable[[int], None]) -> list[tuple[str, Any]]:
        field = "file" if len(parts) == 1 else "files"
        return [(field, (part.filename, _Counting(part.stream, count))) for part in parts]

    def job(self, job: Job | str) -> Job:
        return Job.from_json(self._json(self.http.get(f"/jobs/{_id(job)}")))

    def wait(
        self,
        job: Job | str,
        *,
        on_progress: Callable[[Job], None] | None = None,
        poll_seconds: float = 0.5,
        timeout: float | None = None,
    ) -> Job:
        """Follow the job until it ends; `on_progress` sees every state, the last included.

        It reads the job's event stream (`GET /jobs/{id}/events`), resuming where it
        left off if the stream closes; a server without one is polled instead.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for current in self._states(job, poll_seconds):
            if on_progress is not None:
                on_progress(current)
            if current.is_final:
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {current.id} still {current.status} after {timeout}s")
        raise AssertionError("unreachable: the states go on until the job ends")

    def _states(self, job: Job | str, poll_seconds: float) -> Iterator[Job]:
        """The job's states as they change, from its event stream (reopened where it left
        off when it closes) or, from a server without one, by polling."""
        seen: str | None = None
        try:
            while True:
                for name, event_id, data in self._events(job, seen):
                    seen = event_id
                    if name == "error":
                        error = data.get("error", {})
                        raise ClientError(
                            404, error.get("code", "not_found"), error.get("message", "")
                        )
                    yield Job.from_json(data)
        except _NoEventStream:
            while True:
                yield self.job(job)
                time.sleep(poll_seconds)

    def _events(
        self, job: Job | str, last_event_id: str | None
    ) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(event, id, data) from the job's event stream until the server closes it."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        with self.http.stream("GET", f"/jobs/{_id(job)}/events", headers=headers) as response:
            if response.status_code == 404:
                # A server without the stream, or a missing job: polling tells them apart.
                raise _NoEventStream
            if response.status_code >= 400:
                response.read()
                self._json(response)
            name, event_id, data = "message", "", ""
            for line in response.iter_lines():
                if not line:
                    if data:
                        yield name, event_id, json.loads(data)
                    name, event_id, data = "message", "", ""
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()

    def iter_results(self, job: Job | str, status: str | None = None) -> Iterator[ItemResult]:
        """Every result, in upload order; only those with `status` when given."""
        for page in self._pages(job, {"status": status} if status else {}):
            yield from (ItemResult.from_json(item) for item in page["items"])

    def results(self, job: Job | str) -> list[ItemResult]:
        return list(self.iter_results(job))

    def download(self, job: Job | str, output: Path | IO[bytes], format: str = "csv") -> None:
        """Write every result as `csv`, `jsonl` or `json` (a list) to a path or a binary file."""
        if format not in {"csv", "jsonl", "json"}:
            raise ValueError(f"format must be csv, jsonl or json, not {format!r}")
        handle = output.open("wb") if isinstance(output, Path) else output
        try:
            if format == "json":
                items = [item for page in self._pages(job) for item in page["items"]]
                handle.write(json.dumps(items, indent=2).encode() + b"\n")
                return
            with self.http.stream(
                "GET", f"/jobs/{_id(job)}/results", params={"format": format}
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    self._json(response)
                for chunk in response.iter_bytes():
                    handle.write(chunk)
        finally:
            if isinstance(output, Path):
                handle.close()

    def _pages(
        self, job: Job | str, filters: dict[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000, **(filters or {})}
            if cursor:
                params["cursor"] = cursor
            page = self._json(self.http.get(f"/jobs/{_id(job)}/results", params=params))
            yield page
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def retry(self, job: Job | str) -> Job:
        """A new job of the finished job's failed items (ClientError 409 when none can run)."""
        return Job.from_json(self._json(self.http.post(f"/jobs/{_id(job)}/retry")))

    def cancel(self, job: Job | str) -> Job:
        return Job.from_json(self._json(self.http.post(f"/jobs/{_id(job)}/cancel")))

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        asked = f"{response.request.method} {response.request.url}"
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise ClientError(
                response.status_code,
                error.get("code", "http_error"),
                error.get("message") or response.text[:200] or response.reason_phrase,
                asked,
            )
        if not isinstance(body, dict):
            raise ClientError(
                response.status_code,
                "bad_response",
                "the server did not send JSON: is --server this service's URL?",
                asked,
            )
        return body


class _NoEventStream(Exception):
    """The server predates GET /jobs/{id}/events."""


def _id(job: Job | str) -> str:
    return job.id if isinstance(job, Job) else job
