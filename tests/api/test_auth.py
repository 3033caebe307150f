"""API keys, tenant isolation, Idempotency-Key and rate limits, on Postgres and Redis.

Real API processes with AUTH_ENABLED; keys come from the real CLI.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text

from shared.db.models import Job
from testkit.processes import Service, free_port, running_api
from tests.conftest import fresh_postgres_database, image_bytes, zip_bytes

JPEG = image_bytes(size=(64, 64), fmt="JPEG", colour=(30, 120, 200))
OTHER = image_bytes(size=(64, 64), fmt="JPEG", colour=(200, 20, 20))


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def api(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("auth")
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "AUTH_ENABLED": "true"}
    with running_api(data_dir, **env) as service:
        yield service


def as_key(service: Service, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_every_route_but_health_and_metrics_needs_a_key(api: Service) -> None:
    with api.client() as client:
        for method, path in [
            ("GET", "/jobs"),
            ("POST", "/jobs"),
            ("GET", "/jobs/abc"),
            ("GET", "/jobs/abc/results"),
            ("POST", "/jobs/abc/cancel"),
            ("DELETE", "/jobs/abc"),
            ("GET", "/jobs/abc/webhooks"),
            ("POST", "/predict"),
            ("POST", "/jobs/abc/retry"),
            ("GET", "/usage"),
        ]:
            response = client.request(method, path)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["error"]["code"] == "unauthorized"
        for path in ["/healthz", "/metrics", "/openapi.json"]:
            assert client.get(path).status_code == 200, path
        # Public too; 503 because no worker runs beside this API, never 401.
        assert client.get("/readyz").json()["checks"]["database"] == "ok"
        for header in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ick_00000000_nope"]:
            response = client.get("/jobs", headers={"Authorization": header})
            assert response.status_code == 401, header
        # Refused before the body is read: a stranger cannot make the server take an upload.
        big = client.post("/jobs", files={"file": ("a.zip", b"x" * 5_000_000)})
        assert big.status_code == 401


def test_a_key_sees_only_its_own_jobs_and_others_look_missing(api: Service) -> None:
    alice, bob = api.new_key("alice"), api.new_key("bob")
    with as_key(api, alice) as as_alice, as_key(api, bob) as as_bob:
        job = as_alice.post("/jobs", files={"file": ("a.jpg", JPEG)}).json()
        job_id = job["id"]
        assert as_alice.get(f"/jobs/{job_id}").status_code == 200
        missing = as_bob.get("/jobs/00000000-0000-0000-0000-000000000000").json()["error"]
        for method, path in [
            ("GET", f"/jobs/{job_id}"),
            ("GET", f"/jobs/{job_id}/results"),
            ("GET", f"/jobs/{job_id}/results?format=csv"),
            ("GET", f"/jobs/{job_id}/webhooks"),
            ("POST", f"/jobs/{job_id}/webhooks/redeliver"),
            ("POST", f"/jobs/{job_id}/cancel"),
            ("DELETE", f"/jobs/{job_id}"),
        ]:
            response = as_bob.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            error = response.json()["error"]
            assert error["code"] == missing["code"] == "not_found"
            assert error["message"] == f"no job with id {job_id!r}"  # as for any unknown id
        assert job_id not in {j["id"] for j in as_bob.get("/jobs").json()["items"]}
        assert job_id in {j["id"] for j in as_alice.get("/jobs").json()["items"]}
        assert as_alice.get(f"/jobs/{job_id}").json()["status"] == "queued"  # bob changed nothing


def test_usage_is_counted_per_key(api: Service) -> None:
    carol, dave = api.new_key("carol"), api.new_key("dave")
    with as_key(api, carol) as as_carol, as_key(api, dave) as as_dave:
        archive = zip_bytes({"a.txt": b"notes", "b.txt": b"more notes", "c.jpg": JPEG})
        assert as_carol.post("/jobs", files={"file": ("mixed.zip", archive)}).status_code == 202
        # The two text files failed at upload: carol's usage today; dave has none.
        mine = as_carol.get("/usage").json()
        assert mine["key"] is not None
        assert [(d["failed"], d["classified"]) for d in mine["days"]] == [(2, 0)]
        assert mine["total"]["failed"] == 2
        assert as_dave.get("/usage").json()["days"] == []
        backwards = as_carol.get("/usage", params={"from": "2026-11-30", "to": "2026-11-01"})
        assert backwards.status_code == 422
        too_long = as_carol.get("/usage", params={"from": "2020-01-01", "to": "2026-01-01"})
        assert "at most 366 days" in too_long.json()["error"]["message"]
        # Every key's usage is for an admin key only.
        refused = as_carol.get("/usage/keys")
        assert refused.status_code == 403
        assert "--admin" in refused.json()["error"]["message"]
        assert mine["key"] not in refused.text
    operator = api.new_key("operator", "--admin")
    assert "yes" in next(
        line for line in api.cli("keys", "list").stdout.splitlines() if "operator" in line
    )
    with as_key(api, operator) as as_operator:
        every = as_operator.get("/usage/keys").json()
    by_key = {k["key"]: k for k in every["keys"]}
    assert by_key[mine["key"]] == mine  # each key as GET /usage shows it to that key
    assert all(k["days"] for k in every["keys"])  # dave, with no use, is not listed


def test_keys_are_stored_hashed_and_revoked_keys_stop_working(
    api: Service, database_url: str
) -> None:
    key = api.new_key("carol")
    prefix = "_".join(key.split("_")[:2])
    engine = create_engine(database_url)
    with engine.connect() as connection:
        row = (
            connection.execute(text("SELECT * FROM api_keys WHERE prefix = :p"), {"p": prefix})
            .mappings()
            .one()
        )
    engine.dispose()
    assert row["secret_sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert all(key not in str(value) for value in row.values())

    listed = api.cli("keys", "list").stdout
    assert prefix in listed
    assert "carol" in listed
    assert key not in listed
    with as_key(api, key) as client:
        assert client.get("/jobs").status_code == 200
        assert f"revoked {prefix} (carol)" in api.cli("keys", "revoke", prefix).stdout
        response = client.get("/jobs")
        assert response.status_code == 401
        assert response.json()["error"]["message"] == "the API key has been revoked"


def test_idempotency_key_returns_the_first_job(api: Service, database_url: str) -> None:
    alice, bob = api.new_key("alice-idem"), api.new_key("bob-idem")
    archive = zip_bytes({"1.jpg": JPEG, "2.jpg": OTHER})
    with as_key(api, alice) as as_alice, as_key(api, bob) as as_bob:

        def submit(client: httpx.Client, key: str, data: bytes = archive) -> httpx.Response:
            return client.post(
                "/jobs",
                files={"file": ("p.zip", data)},
                data={"metadata": '{"run": 1}'},
                headers={"Idempotency-Key": key},
            )

        first = submit(as_alice, "upload-1")
        again = submit(as_alice, "upload-1")
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers

        other = submit(as_alice, "upload-1", zip_bytes({"1.jpg": JPEG}))
        assert other.status_code == 409
        assert "already used with a different request" in other.json()["error"]["message"]
        # Keys belong to their API key: bob's "upload-1" is his own.
        assert submit(as_bob, "upload-1").json()["id"] != first.json()["id"]

        with ThreadPoolExecutor(6) as pool:  # a client retrying in parallel
            racing = list(pool.map(lambda _: submit(as_alice, "upload-2"), range(6)))
        assert {r.status_code for r in racing} == {202}
        assert len({r.json()["id"] for r in racing}) == 1

        too_long = submit(as_alice, "k" * 256)
        assert too_long.status_code == 422

    engine = create_engine(database_url)
    with engine.connect() as connection:
        owner = select(text("id")).select_from(text("api_keys")).where(text("name = 'alice-idem'"))
        jobs = connection.scalar(
            select(func.count()).select_from(Job).where(Job.owner_id.in_(owner))
        )
        remembered = connection.scalar(text("SELECT count(*) FROM idempotency_keys"))
    engine.dispose()
    assert jobs == 2  # upload-1 once, upload-2 once, whatever the retries
    assert remembered == 3  # alice's two keys and bob's one


def test_rate_limit_per_key_is_shared_by_api_processes_through_redis(
    api: Service, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    limited = {"RATE_LIMIT_PER_MINUTE": "6", "RATE_LIMIT_BURST": "3"}
    services = [
        Service({**api.env, **limited}, tmp_path, free_port()),
        Service({**api.env, **limited}, tmp_path, free_port()),
    ]
    for service in services:
        service.start_api()
    try:
        dave, erin = api.new_key("dave"), api.new_key("erin")
        codes = []
        for index in range(4):  # alternate between the two API processes
            with as_key(services[index % 2], dave) as client:
                response = client.post("/jobs", files={"file": ("a.jpg", JPEG)})
                codes.append(response.status_code)
        assert codes == [202, 202, 202, 429]
        error = response.json()["error"]
        assert error["code"] == "rate_limited"
        assert "over the limit of 6 jobs per minute" in error["message"]
        assert 1 <= int(response.headers["retry-after"]) <= 10
        with as_key(services[0], dave) as client:
            assert client.get("/jobs").status_code == 200  # reads are not limited
        with as_key(services[1], erin) as client:  # another key has its own allowance
            assert client.post("/jobs", files={"file": ("a.jpg", JPEG)}).status_code == 202
    finally:
        for service in services:
            service.stop()


@pytest.mark.parametrize("header", ["Authorization", "Idempotency-Key", "Content-Type"])
def test_a_header_that_means_one_thing_is_refused_when_sent_twice(
    api: Service, header: str
) -> None:
    alice, bob = api.new_key("dup-a"), api.new_key("dup-b")
    values = {
        "Authorization": (f"Bearer {alice}", f"Bearer {bob}"),
        "Idempotency-Key": ("one", "two"),
        "Content-Type": ("multipart/form-data; boundary=a", "multipart/form-data; boundary=b"),
    }[header]
    headers = [("Authorization", f"Bearer {alice}")] if header != "Authorization" else []
    headers += [(header, value) for value in values]
    response = httpx.post(f"{api.url}/jobs", headers=headers, content=b"--a--\r\n")
    assert response.status_code == 400, response.text
    assert f"send the {header} header once" in response.json()["error"]["message"]
