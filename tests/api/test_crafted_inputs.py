"""Hand-written hostile requests: each is a 4xx in the one error shape, never a 500.

The API runs on Postgres, which refuses NUL bytes in text, so a value the
service forgot to check shows up here as a 500.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit.processes import Service, running_api
from tests.conftest import fresh_postgres_database, image_bytes, zip_bytes

JPEG = image_bytes(size=(32, 32), fmt="JPEG", colour=(30, 120, 200))


def cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


WRONG_SHAPES: list[Any] = [
    [],
    [1],
    [1, 2, 3],
    [None, None],
    [123, "x"],
    ["not a date", "x"],
    ["2024-01-01T00:00:00+00:00", 5],
    [["nested"], {}],
    ["a"],
    [1e400],
    [True],
    {"a": 1},
    "text",
]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with (
        fresh_postgres_database() as database_url,
        running_api(
            tmp_path_factory.mktemp("crafted"),
            DATABASE_URL=database_url,
            WEBHOOK_SECRETS="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        ) as service,
    ):
        yield service


@pytest.fixture(scope="module")
def job_id(api: Service) -> str:
    with api.client() as client:
        response = client.post("/jobs", files={"file": ("one.jpg", JPEG)})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])


def assert_refused(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert response.status_code in (statuses or (400, 404, 409, 413, 415, 422)), (
        response.status_code,
        response.text,
    )
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["code"]
    assert error["message"]
    return error


@pytest.mark.parametrize("value", WRONG_SHAPES, ids=repr)
def test_decodable_cursors_of_the_wrong_shape(api: Service, job_id: str, value: Any) -> None:
    paths = ["/jobs"] if value == [1] else ["/jobs", f"/jobs/{job_id}/results"]  # [1]: valid
    with api.client() as client:
        for path in paths:
            error = assert_refused(client.get(path, params={"cursor": cursor(value)}), 422)
            assert "cursor" in error["message"]


NESTED = "[" * 30_000 + "]" * 30_000  # under MAX_FORM_FIELD_BYTES, deep enough to recurse


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metadata", NESTED),
        ("metadata", '{"a": ' * 5000 + "1" + "}" * 5000),
        ("metadata", '{"a": NaN}'),
        ("metadata", '{"a": Infinity}'),
        ("metadata", '{"a\\u0000": "b"}'),
        ("metadata", '{"a": "b\\u0000"}'),
        ("metadata", '{"a": "\\ud800"}'),
        ("metadata", "{}\x00"),
        ("webhook_url", "http://127.0.0.1:9/\x00"),
        ("webhook_url", "http://127.0.0.1:9/a\x7fb"),
        ("webhook_url", "http://127.0.0.1:9/a b"),
        ("webhook_url", "http://[::1"),
        ("webhook_url", "http://127.0.0.1:99999/"),
        ("webhook_events", "job.started\x00"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_form_fields_that_decode_but_cannot_be_kept(api: Service, field: str, value: str) -> None:
    with api.client() as client:
        response = client.post("/jobs", files={"file": ("one.jpg", JPEG)}, data={field: value})
    assert_refused(response, 422)


@pytest.mark.parametrize(
    "name", ["a\x00.jpg", "\x00", "a" * 5000 + ".jpg", "\ud800.jpg"], ids=lambda n: repr(n[:12])
)
def test_file_names_with_nul_bytes_or_worse(api: Service, name: str) -> None:
    encoded = name.encode("utf-8", "surrogatepass")
    with api.client() as client:
        response = client.post(
            "/jobs",
            content=b'--b\r\nContent-Disposition: form-data; name="file"; filename="'
            + encoded
            + b'"\r\nContent-Type: image/jpeg\r\n\r\n'
            + JPEG
            + b"\r\n--b--\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
    if response.status_code == 202:  # kept under a name the database can hold
        assert "\x00" not in response.json()["id"]
    else:
        assert_refused(response, 400, 422)


def test_zip_entries_with_control_characters_fail_alone(api: Service) -> None:
    archive = zip_bytes({"good.jpg": JPEG, "bad\x07name.jpg": JPEG})
    with api.client() as client:
        response = client.post("/jobs", files={"file": ("a.zip", archive)})
        assert response.status_code == 202, response.text
        job = response.json()
        items = client.get(f"/jobs/{job['id']}/results").json()["items"]
    assert [i["status"] for i in items] == ["queued", "failed"]
    assert "\x00" not in items[1]["filename"]
    assert items[1]["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/%00",
        "/jobs/a%00b/results",
        "/jobs/%00/results?format=csv",
        "/jobs?cursor=%00",
        "/jobs?status=%00",
        "/jobs/%00/webhooks",
        "/jobs/" + "x" * 5000,
    ],
)
def test_nul_bytes_and_junk_in_the_url(api: Service, path: str) -> None:
    with api.client() as client:
        assert_refused(client.get(path))
        if path.startswith("/jobs/") and "?" not in path:
            assert_refused(client.delete(path))
            assert_refused(client.post(path + "/cancel"))


def test_idempotency_keys_that_do_not_fit(api: Service) -> None:
    with api.client() as client:
        for key in ("k" * 300, "a\x7fb"):
            response = client.post(
                "/jobs", files={"file": ("one.jpg", JPEG)}, headers={"Idempotency-Key": key}
            )
            error = assert_refused(response, 422)
            assert "Idempotency-Key" in error["message"]


def test_predict_takes_one_image_not_an_archive(api: Service) -> None:
    archive = zip_bytes({"a.jpg": JPEG, "b.jpg": JPEG})
    with api.client() as client:
        error = assert_refused(client.post("/predict", files={"file": ("a.zip", archive)}), 422)
        assert "one image" in error["message"]
        text_file = client.post("/predict", files={"file": ("a.txt", b"hello")})
        assert_refused(text_file, 415, 422)


# Generated values of the same classes: decodable cursors of every shape, nested and
# non-standard JSON, and text with NUL and control characters in every text field.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)
HOSTILE_TEXT = st.text(
    alphabet=st.characters(codec="utf-8") | st.sampled_from("\x00\x01\x7f\n%[]{}:/@ "),
    max_size=40,
)
FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


def assert_not_a_server_error(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.request.url, response.text)
    if response.status_code >= 400:
        assert set(response.json()) == {"error"}


@FUZZ
@given(value=JSON_VALUES)
def test_generated_cursors(api: Service, job_id: str, value: Any) -> None:
    with api.client() as client:
        for path in ("/jobs", f"/jobs/{job_id}/results"):
            assert_not_a_server_error(client.get(path, params={"cursor": cursor(value)}))


@FUZZ
@given(metadata=JSON_VALUES, depth=st.integers(0, 60))
def test_generated_metadata(api: Service, metadata: Any, depth: int) -> None:
    raw = "[" * depth + json.dumps(metadata) + "]" * depth
    with api.client() as client:
        response = client.post("/jobs", files={"file": ("a.jpg", JPEG)}, data={"metadata": raw})
    assert_not_a_server_error(response)


@FUZZ
@given(text=HOSTILE_TEXT, field=st.sampled_from(["metadata", "webhook_url", "webhook_events"]))
def test_generated_text_in_fields_names_and_urls(api: Service, text: str, field: str) -> None:
    with api.client() as client:
        assert_not_a_server_error(
            client.post("/jobs", files={"file": ("a.jpg", JPEG)}, data={field: text})
        )
        assert_not_a_server_error(client.post("/jobs", files={"file": (text, JPEG)}))
        assert_not_a_server_error(client.get("/jobs/" + quote(text, safe="")))
        assert_not_a_server_error(client.get("/jobs", params={"cursor": text}))
