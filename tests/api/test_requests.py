"""The API process over real HTTP, without a worker: limits, bad input, job bookkeeping."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.processes import Service, error_of, running_api, service_env
from tests.conftest import image_bytes, zip_bytes

LIMITS = {
    "MAX_UPLOAD_BYTES": "2000000",
    "MAX_IMAGES_PER_JOB": "5",
    "MAX_ZIP_ENTRIES": "8",
    "MAX_ZIP_UNCOMPRESSED_BYTES": "3000000",
    "MAX_ZIP_RATIO": "50",
    "MAX_IMAGE_PIXELS": "1000000",
    "WEBHOOK_SECRETS": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_api(tmp_path_factory.mktemp("api"), **LIMITS) as service:
        yield service


@pytest.fixture
def client(api: Service) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


def post_files(client: httpx.Client, *files: tuple[str, bytes], **form: str) -> httpx.Response:
    parts = [("files", (name, data)) for name, data in files]
    return client.post("/jobs", files=parts, data=form)


JPEG = image_bytes(size=(64, 64), fmt="JPEG", colour=(30, 120, 200))


def test_a_job_is_accepted_with_location_and_the_documented_shape(client: httpx.Client) -> None:
    response = client.post(
        "/jobs", files={"file": ("one.jpg", JPEG)}, data={"metadata": '{"batch": 7}'}
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert (job["total"], job["succeeded"], job["failed"], job["progress"]) == (1, 0, 0, 0.0)
    assert job["metadata"] == {"batch": 7}
    assert job["links"] == {
        "self": f"/jobs/{job['id']}",
        "results": f"/jobs/{job['id']}/results",
        "webhooks": f"/jobs/{job['id']}/webhooks",
    }
    assert client.get(job["links"]["self"]).json() == job


def test_zip_walks_folders_ignores_hidden_and_fails_non_images_alone(
    client: httpx.Client, api: Service
) -> None:
    archive = zip_bytes(
        {
            "trip/day1/a.jpg": JPEG,
            "trip/b.png": image_bytes("RGBA", (20, 20)),
            "trip/notes.txt": b"not a picture",
            "__MACOSX/trip/._a.jpg": b"resource fork",
            "trip/.DS_Store": b"junk",
            ".hidden.jpg": JPEG,
        }
    )
    response = client.post("/jobs", files={"file": ("trip.zip", archive)})
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["total"], job["failed"]) == (3, 1)
    items = client.get(f"/jobs/{job['id']}/results").json()["items"]
    assert [(i["filename"], i["status"]) for i in items] == [
        ("trip/day1/a.jpg", "queued"),
        ("trip/b.png", "queued"),
        ("trip/notes.txt", "failed"),
    ]
    assert items[2]["error"] == "not an image"
    stored = sorted(p.name for p in (api.data_dir / "uploads" / job["id"]).iterdir())
    assert stored == sorted(i["id"] for i in items[:2])  # named by id, never by entry name


@pytest.mark.parametrize("chunked", [False, True])
def test_upload_over_the_limit_is_413(client: httpx.Client, chunked: bool) -> None:
    body = b"x" * 2_100_000
    if chunked:  # no Content-Length: the limit is enforced while the body streams in
        head = (
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n"
        )
        chunks = [head, *(body[i : i + 500_000] for i in range(0, len(body), 500_000))]
        response = client.post(
            "/jobs",
            content=iter([*chunks, b"\r\n--xyz--\r\n"]),
            headers={"content-type": "multipart/form-data; boundary=xyz"},
        )
    else:
        response = client.post("/jobs", files={"file": ("big.jpg", body)})
    error = error_of(response, 413)
    assert error["code"] == "limit_exceeded"
    assert "2,000,000 bytes (MAX_UPLOAD_BYTES)" in error["message"]


@pytest.mark.parametrize(
    ("entries", "needle"),
    [
        ({f"{i}.jpg": JPEG for i in range(6)}, "(MAX_IMAGES_PER_JOB)"),
        ({f"{i}.txt": b"x" for i in range(9)}, "more than the 8 entries allowed (MAX_ZIP_ENTRIES)"),
        ({"huge.bmp": bytes(3_100_000)}, "(MAX_ZIP_UNCOMPRESSED_BYTES)"),
        ({"bomb.bmp": bytes(1_500_000)}, "over the limit of 50:1 (MAX_ZIP_RATIO)"),
    ],
)
def test_zip_limits_are_413_and_name_the_setting(
    client: httpx.Client, entries: dict[str, bytes], needle: str
) -> None:
    error = error_of(client.post("/jobs", files={"file": ("x.zip", zip_bytes(entries))}), 413)
    assert needle in error["message"]


def test_image_over_the_pixel_limit(client: httpx.Client) -> None:
    big = image_bytes("L", (2000, 1000), "PNG")
    error = error_of(client.post("/jobs", files={"file": ("wide.png", big)}), 413)
    assert error["code"] == "image_too_large"
    assert "2,000,000 pixels, over the limit of 1,000,000 (MAX_IMAGE_PIXELS)" in error["message"]
    # Inside a zip it fails alone and the job goes on.
    response = client.post(
        "/jobs", files={"file": ("z.zip", zip_bytes({"w.png": big, "ok.jpg": JPEG}))}
    )
    assert response.status_code == 202
    assert response.json()["failed"] == 1


@pytest.mark.parametrize(
    ("files", "status", "code", "needle"),
    [
        (
            [("notes.txt", b"plain text")],
            415,
            "unsupported_media_type",
            "neither an image nor a .zip",
        ),
        ([("docs.zip", zip_bytes({"a.txt": b"1", "b.csv": b"2"}))], 422, "no_images", "no images"),
        ([("empty.zip", zip_bytes({}))], 422, "no_images", "no files"),
        (
            [("bad.zip", b"PK\x03\x04 this is not really a zip")],
            422,
            "invalid_input",
            "not a readable zip",
        ),
        ([], 422, "invalid_input", "no file uploaded"),
        ([("empty.jpg", b"")], 422, "invalid_input", "'empty.jpg' is an empty file (0 bytes)"),
    ],
)
def test_bad_uploads_are_refused_clearly(
    client: httpx.Client, files: list[tuple[str, bytes]], status: int, code: str, needle: str
) -> None:
    response = post_files(client, *files) if files else client.post("/jobs", data={"x": "1"})
    error = error_of(response, status)
    assert error["code"] == code
    assert needle in error["message"]


@pytest.mark.parametrize(
    ("form", "needle"),
    [
        ({"metadata": "{not json"}, "metadata must be a JSON object"),
        ({"metadata": "[1, 2]"}, "metadata must be a JSON object"),
        ({"webhook_url": "ftp://example.com/hook"}, "webhook_url must be an http(s) URL"),
        ({"webhook_url": "http://127.0.0.1/hook"}, "127.0.0.1 is a loopback address"),
        ({"webhook_url": "http://169.254.169.254/latest"}, "a link-local (cloud metadata"),
        ({"webhook_url": "http://10.0.0.1/hook"}, "10.0.0.1 is a private address"),
        (
            {"webhook_url": "http://localhost:8080/hook"},
            "'localhost' does not resolve to public addresses only",
        ),
        ({"webhook_url": "http://[::1]/hook"}, "::1 is a loopback address"),
        ({"webhook_url": "http://[2002:7f00:1::]/hook"}, "carried inside an IPv6 address"),
        ({"webhook_url": "https://user:secret@example.com/hook"}, "must not carry credentials"),
        ({"webhook_events": "job.started,job.exploded"}, "unknown webhook_events job.exploded"),
    ],
)
def test_bad_form_fields_are_422(client: httpx.Client, form: dict[str, str], needle: str) -> None:
    error = error_of(post_files(client, ("a.jpg", JPEG), **form), 422)
    assert needle in error["message"]


def test_unknown_jobs_and_routes_use_the_error_shape(client: httpx.Client) -> None:
    for method, path in [
        ("GET", "/jobs/nope"),
        ("GET", "/jobs/nope/results"),
        ("POST", "/jobs/nope/cancel"),
        ("DELETE", "/jobs/nope"),
        ("GET", "/no-such-route"),
    ]:
        assert error_of(client.request(method, path), 404)["code"] == "not_found"
    assert error_of(client.put("/jobs"), 405)["code"] == "method_not_allowed"
    assert error_of(client.get("/jobs", params={"limit": 0}), 422)["code"] == "invalid_request"
    bad_cursor = client.get("/jobs", params={"cursor": "!!!"})
    assert "cursor" in error_of(bad_cursor, 422)["message"]


def test_cancel_and_delete(client: httpx.Client, api: Service) -> None:
    job = client.post(
        "/jobs", files={"file": ("a.zip", zip_bytes({"1.jpg": JPEG, "2.jpg": JPEG}))}
    ).json()
    cancelled = client.post(f"/jobs/{job['id']}/cancel").json()
    assert (cancelled["status"], cancelled["skipped"], cancelled["progress"]) == (
        "cancelled",
        2,
        1.0,
    )
    assert error_of(client.post(f"/jobs/{job['id']}/cancel"), 409)["code"] == "conflict"
    folder = api.data_dir / "uploads" / job["id"]
    assert len(list(folder.iterdir())) == 2
    assert client.delete(f"/jobs/{job['id']}").status_code == 204
    assert not folder.exists()
    assert error_of(client.get(f"/jobs/{job['id']}"), 404)["code"] == "not_found"


def test_listing_filters_and_pages(client: httpx.Client) -> None:
    ids = [client.post("/jobs", files={"file": (f"{i}.jpg", JPEG)}).json()["id"] for i in range(3)]
    client.post(f"/jobs/{ids[1]}/cancel")
    first = client.get("/jobs", params={"limit": 2}).json()
    second = client.get("/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    listed = [j["id"] for j in first["items"] + second["items"]]
    assert listed[:3] == ids[::-1]  # newest first, no gaps or repeats across pages
    cancelled = client.get("/jobs", params={"status": "cancelled", "limit": 500}).json()["items"]
    assert ids[1] in {j["id"] for j in cancelled}
    assert all(j["status"] == "cancelled" for j in cancelled)
    uploads = client.get("/jobs", params={"source": "jobs", "limit": 500}).json()["items"]
    assert set(ids) <= {j["id"] for j in uploads}
    assert {j["source"] for j in uploads} == {"jobs"}
    predicted = client.get("/jobs", params={"source": "predict", "limit": 500}).json()["items"]
    assert not set(ids) & {j["id"] for j in predicted}


def test_listing_by_creation_time_with_a_total(client: httpx.Client) -> None:
    made = [client.post("/jobs", files={"file": (f"{i}.jpg", JPEG)}).json() for i in range(3)]
    every = client.get("/jobs", params={"limit": 1}).json()
    assert len(every["items"]) == 1
    assert every["total"] >= 3  # every matching job, not the page's
    since = made[1]["created_at"]
    later = client.get("/jobs", params={"created_after": since, "limit": 500}).json()
    assert [j["id"] for j in later["items"]] == [made[2]["id"], made[1]["id"]]
    assert later["total"] == 2
    earlier = client.get("/jobs", params={"created_before": since, "limit": 500}).json()
    assert made[0]["id"] in {j["id"] for j in earlier["items"]}
    assert not {made[1]["id"], made[2]["id"]} & {j["id"] for j in earlier["items"]}
    assert earlier["total"] == len(earlier["items"])
    # A time without its zone is ambiguous: refused, not guessed.
    naive = client.get("/jobs", params={"created_after": "2026-11-30T03:00:00"})
    assert error_of(naive, 422)["code"] == "invalid_request"


def test_results_filter_by_status_and_class(client: httpx.Client) -> None:
    archive = zip_bytes({"a.jpg": JPEG, "notes.txt": b"not a photo", "b.jpg": JPEG})
    job = client.post("/jobs", files={"file": ("mixed.zip", archive)}).json()
    failed = client.get(f"/jobs/{job['id']}/results", params={"status": "failed"}).json()
    assert [i["filename"] for i in failed["items"]] == ["notes.txt"]
    queued = client.get(f"/jobs/{job['id']}/results", params={"status": "queued"}).json()
    assert [i["filename"] for i in queued["items"]] == ["a.jpg", "b.jpg"]
    as_csv = client.get(
        f"/jobs/{job['id']}/results", params={"status": "failed", "format": "csv"}
    ).text.splitlines()
    assert len(as_csv) == 2
    assert as_csv[1].startswith("notes.txt,failed")
    forest = client.get(f"/jobs/{job['id']}/results", params={"class": "forest"}).json()
    assert forest["items"] == []  # nothing is classified yet: no worker runs here
    unknown = client.get(f"/jobs/{job['id']}/results", params={"class": "castle"})
    assert error_of(unknown, 422)["code"] == "invalid_request"
    # A job still running cannot be retried yet; one with no failure, never.
    assert error_of(client.post(f"/jobs/{job['id']}/retry"), 409)["code"] == "conflict"


def _read_events(response: httpx.Response) -> Iterator[tuple[str, str, dict[str, Any]]]:
    name, event_id = "", ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("id:"):
            event_id = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            yield name, event_id, json.loads(line.split(":", 1)[1])


def test_events_stream_progress_then_the_final_document(client: httpx.Client) -> None:
    job = client.post("/jobs", files={"file": ("a.zip", zip_bytes({"1.jpg": JPEG}))}).json()
    assert job["eta_seconds"] is None  # nothing has run: no rate to go by
    with client.stream("GET", f"/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = _read_events(stream)
        name, event_id, data = next(events)
        assert (name, event_id, data["status"], data["id"]) == (
            "progress",
            "0",
            "queued",
            job["id"],
        )
        client.post(f"/jobs/{job['id']}/cancel")  # no worker here: end it by hand
        name, event_id, data = next(events)
        assert (name, event_id, data["status"], data["skipped"]) == (
            "done",
            "final",
            "cancelled",
            1,
        )
        assert list(events) == []  # and the stream closes
    # Resuming after the last event seen sends only what is new: here, the end.
    with client.stream(
        "GET", f"/jobs/{job['id']}/events", headers={"Last-Event-ID": "0"}
    ) as stream:
        assert [name for name, _, _ in _read_events(stream)] == ["done"]
    missing = client.get("/jobs/00000000-0000-0000-0000-000000000000/events")
    assert error_of(missing, 404)["code"] == "not_found"


def test_results_pages_follow_the_cursor(client: httpx.Client) -> None:
    archive = zip_bytes({f"{i}.jpg": JPEG for i in range(5)})
    job = client.post("/jobs", files={"file": ("five.zip", archive)}).json()
    names, cursor = [], None
    while True:
        page = client.get(
            f"/jobs/{job['id']}/results", params={"limit": 2, "cursor": cursor}
        ).json()
        names += [item["filename"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == [f"{i}.jpg" for i in range(5)]


def test_openapi_declares_the_error_shape(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    assert "ErrorResponse" in schema["components"]["schemas"]
    for path, method in [("/jobs", "post"), ("/jobs/{job_id}", "get"), ("/predict", "post")]:
        responses = schema["paths"][path][method]["responses"]
        for status in ("404", "413", "422", "503"):
            assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/ErrorResponse"
            )


def test_readiness_names_the_missing_worker(client: httpx.Client) -> None:
    response = client.get("/readyz")  # this module runs an API and no worker
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {
            "database": "ok",
            "broker": "ok",
            "workers": "error: no classification worker and no webhook worker alive in the "
            "last 30s (WORKER_STALE_SECONDS)",
        },
    }


def test_the_api_never_imports_tensorflow(tmp_path: Path) -> None:
    probe = (
        "import sys; from api.app import create_app; create_app(); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, env=service_env(tmp_path), timeout=60)


@pytest.mark.parametrize("path", ["/jobs", "/predict"])
def test_a_missing_or_misnamed_file_gets_the_same_sentence_on_every_route(
    client: httpx.Client, path: str
) -> None:
    response = client.post(path, files={"image": ("a.jpg", b"\xff\xd8\xff")})
    error = error_of(response, 422)
    assert error["code"] == "invalid_input"
    assert error["message"].startswith("no file uploaded: send ")
    assert "multipart field `file`" in error["message"]


def test_validation_errors_keep_each_field_and_its_location(client: httpx.Client) -> None:
    response = client.get("/jobs", params={"limit": "0", "status": "bogus"})
    error = error_of(response, 422)
    assert error["code"] == "invalid_request"
    locations = {field["location"] for field in error["details"]["fields"]}
    assert locations == {"query.limit", "query.status"}
    assert all(field["message"] for field in error["details"]["fields"])
