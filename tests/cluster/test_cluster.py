"""The service as separate hosts: faults a cluster meets, and every item ends once.

Seven network namespaces on a private bridge (198.18.0.0/24, the benchmarking
range): a data host (PostgreSQL, Redis, an S3-compatible server), two API hosts,
two worker hosts and the client this test speaks from. Each host has its own
hostname, a read-only root and private scratch folders (`testkit.hosts`): nothing
is shared but the network. While 1,000 photos go through jobs sent to both API
hosts (the workers run the stand-in model, `testkit.stand_in`, at one pace on
every CPU):

1. worker host 1 is cut off the network for longer than its lease, while it
   holds items, then reconnected;
2. API host 2 is SIGKILLed half-way through receiving a zip, then restarted;
3. Redis is SIGKILLed (it keeps nothing on disk: every queued message is lost)
   and restarted.

Then: every job succeeded and holds every photo once; no item's result was
written or counted twice (the counters equal the rows); the items the cut-off
worker held were finished by the other; the half-received zip left no job; and
`/metrics` on both API hosts agrees with the database. `make cluster-test` runs
this alone; it runs in `make test` too. It skips, saying why, only where this
machine cannot make namespaces (not root, no iproute2).
"""

from __future__ import annotations

import io
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.training.dataset import list_labelled_images
from testkit.hosts import Cluster, Host, inside, reachable, why_no_namespaces
from testkit.processes import wait_for

pytestmark = pytest.mark.skipif((reason := why_no_namespaces()) is not None, reason=reason or "")

PHOTOS_PER_JOB = 100
JOBS = 10
LEASE_SECONDS = 8  # REQUEUE_AFTER_SECONDS: the cut lasts longer than this
API_PORT = 9696
POSTGRES_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


@dataclass
class Deployment:
    cluster: Cluster
    logs: Path
    data: Host
    apis: list[Host]
    workers: list[Host]
    client: Host
    env: dict[str, str]
    processes: dict[str, Any] = field(default_factory=dict)

    @property
    def database(self) -> str:
        return f"host={self.data.address} user=postgres dbname=postgres"

    def url(self, api: Host) -> str:
        return f"http://{api.address}:{API_PORT}"

    def start(self, name: str, host: Host, argv: list[str]) -> Any:
        process = host.start(argv, self.env, self.logs / f"{name}.log")
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def start_redis(self) -> None:
        self.start("redis", self.data, [
            "redis-server", "--bind", self.data.address, "--port", "6379", "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--dir", "/tmp",
        ])  # fmt: skip
        reachable(self.client, self.data.address, 6379)

    def start_api(self, host: Host) -> None:
        name = f"api-{host.name}"
        self.start(name, host, [sys.executable, "-m", "intel_classifier", "api",
                                "--host", host.address, "--port", str(API_PORT)])  # fmt: skip
        with inside(self.client):
            wait_for(lambda: _answers(self.url(host) + "/healthz") or _died(self, name),
                     60, f"the API on {host.name}")  # fmt: skip
        assert not _died(self, name), self.log(name)

    def start_worker(self, host: Host) -> None:
        name = f"worker-{host.name}"
        self.start(name, host, [sys.executable, "-m", "intel_classifier", "worker"])
        wait_for(lambda: " ready." in self.log(name) or _died(self, name), 180,
                 f"the worker on {host.name}")  # fmt: skip
        assert not _died(self, name), self.log(name)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with inside(self.client), psycopg.connect(self.database, connect_timeout=10) as db:
            return db.execute(sql, args).fetchall()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _died(deployment: Deployment, name: str) -> bool:
    return deployment.processes[name].poll() is not None


@contextmanager
def deployed(tmp_path: Path, model: Path) -> Iterator[Deployment]:
    with ExitStack() as stack:
        cluster = stack.enter_context(Cluster())
        hosts = {name: cluster.add_host(name) for name in
                 ("data", "api1", "api2", "worker1", "worker2", "client")}  # fmt: skip
        data = hosts["data"]
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/tmp/host",
            "DATA_DIR": "/tmp/host/var",
            "CACHE_DIR": "/tmp/host/cache",
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": f"postgresql+psycopg://postgres@{data.address}:5432/postgres",
            "REDIS_URL": f"redis://{data.address}:6379/0",
            "STORAGE_URL": "s3://uploads/cluster",
            "AWS_ENDPOINT_URL": f"http://{data.address}:5000",
            "AWS_ACCESS_KEY_ID": "cluster",
            "AWS_SECRET_ACCESS_KEY": "cluster",
            "AWS_DEFAULT_REGION": "us-east-1",
            "REQUEUE_AFTER_SECONDS": str(LEASE_SECONDS),
            "HEARTBEAT_INTERVAL_SECONDS": "1",
            "WORKER_STALE_SECONDS": "6",
            "DATABASE_SILENT_CLIENT_SECONDS": "3",
            "RATE_LIMIT_PER_MINUTE": "0",
            "MODEL_PATH": str(model),
        }
        deployment = Deployment(
            cluster, tmp_path, data, [hosts["api1"], hosts["api2"]],
            [hosts["worker1"], hosts["worker2"]], hosts["client"], env,
        )  # fmt: skip
        stack.callback(_show_logs_on_failure, deployment)
        _start_data_host(deployment)
        hosts["api1"].run([sys.executable, "-m", "intel_classifier", "migrate"], env=env)
        for api in deployment.apis:
            deployment.start_api(api)
        for worker in deployment.workers:
            deployment.start_worker(worker)
        yield deployment


def _start_data_host(deployment: Deployment) -> None:
    data, binaries = deployment.data, POSTGRES_BIN[0]
    as_postgres = ["runuser", "-u", "postgres", "--"]
    data.run([*as_postgres, str(binaries / "initdb"), "-D", "/tmp/pg", "-U", "postgres",
              "-A", "trust"])  # fmt: skip
    data.run(["sh", "-c", "echo 'host all all 198.18.0.0/15 trust' >> /tmp/pg/pg_hba.conf"])
    deployment.start("postgres", data, [
        *as_postgres, str(binaries / "postgres"), "-D", "/tmp/pg", "-k", "/tmp",
        "-c", f"listen_addresses={data.address}", "-c", "fsync=off", "-c", "max_connections=300",
    ])  # fmt: skip
    deployment.start_redis()
    deployment.start("s3", data, [str(Path(sys.executable).parent / "moto_server"),
                                  "-H", data.address, "-p", "5000"])  # fmt: skip
    for port in (5432, 5000):
        reachable(deployment.client, data.address, port)
    import boto3

    with inside(deployment.client):
        boto3.client(
            "s3", endpoint_url=deployment.env["AWS_ENDPOINT_URL"], region_name="us-east-1",
            aws_access_key_id="cluster", aws_secret_access_key="cluster",
        ).create_bucket(Bucket="uploads")  # fmt: skip


def _show_logs_on_failure(deployment: Deployment) -> None:
    if sys.exc_info()[0] is not None:
        for log in sorted(deployment.logs.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


def photo_zips() -> list[bytes]:
    photos = [image.path for image in list_labelled_images_sorted()][: PHOTOS_PER_JOB * JOBS]
    zips = []
    for start in range(0, len(photos), PHOTOS_PER_JOB):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for path in photos[start : start + PHOTOS_PER_JOB]:
                archive.write(path, f"{path.parent.name}/{path.name}")
        zips.append(buffer.getvalue())
    return zips


def list_labelled_images_sorted() -> list[Any]:
    from testkit.resources import TRAIN_DIR

    images = list_labelled_images(TRAIN_DIR)
    return images[::3] + images[1::3]  # every class, not one class after another


def submit(deployment: Deployment, api: Host, body: bytes) -> str:
    with inside(deployment.client):
        response = httpx.post(
            deployment.url(api) + "/jobs", files={"file": ("photos.zip", body)}, timeout=120
        )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def upload_killed_halfway(deployment: Deployment, api: Host) -> None:
    """Stream a zip to `api`, SIGKILL its API process after half the body, then restart it."""
    boundary = uuid.uuid4().hex
    body = zipfile_of_noise()
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="half.zip"\r\nContent-Type: application/zip\r\n\r\n').encode()  # fmt: skip
    tail = f"\r\n--{boundary}--\r\n".encode()
    name = f"api-{api.name}"

    def chunks() -> Iterator[bytes]:
        yield head
        half = len(body) // 2
        for start in range(0, half, 64 * 1024):
            yield body[start : min(start + 64 * 1024, half)]
        time.sleep(0.3)  # let the server take in what it was sent
        api.kill(deployment.processes[name])
        yield body[half:]
        yield tail

    with inside(deployment.client):
        try:
            response = httpx.post(
                deployment.url(api) + "/jobs",
                content=chunks(),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                         "Content-Length": str(len(head) + len(body) + len(tail))},
                timeout=30,
            )  # fmt: skip
        except httpx.HTTPError:
            response = None
    assert response is None or response.status_code >= 500, "a killed API cannot answer 202"
    deployment.start_api(api)


def zipfile_of_noise() -> bytes:
    """A zip of 300 photos (stored, so the body is big enough to cut in half)."""
    images = list_labelled_images_sorted()[-300:]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for image in images:
            archive.write(image.path, f"half/{image.path.name}")
    return buffer.getvalue()


def held_by(deployment: Deployment, host: Host) -> set[str]:
    rows = deployment.query(
        "SELECT id FROM items WHERE status = 'running' AND leased_by LIKE %s",
        f"{host.name}:%",
    )
    return {row[0] for row in rows}


def cut_while_holding(deployment: Deployment, host: Host) -> set[str]:
    """Cut `host` off while its worker holds items, and return those: read after the
    cut, they are what it can no longer write back (a group it finished just before
    the cut would otherwise count as held)."""
    for _ in range(5):
        wait_for(lambda: held_by(deployment, host), 60, f"{host.name} to hold items")
        deployment.cluster.cut(host)
        held = held_by(deployment, host)
        if held:
            return held
        deployment.cluster.reconnect(host)  # it wrote back all it held as it was cut
    raise AssertionError(f"{host.name} held nothing each time it was cut")


def finished_by(deployment: Deployment, items: set[str]) -> set[str]:
    """The hosts whose workers wrote the results of `items` ("" for one not finished yet)."""
    rows = deployment.query(
        "SELECT CASE WHEN status = 'succeeded' THEN split_part(leased_by, ':', 1) ELSE '' END "
        "FROM items WHERE id = ANY(%s)",
        list(items),
    )
    return {row[0] for row in rows}


def metrics_of(deployment: Deployment, api: Host) -> dict[tuple[str, str], float]:
    with inside(deployment.client):
        text = httpx.get(deployment.url(api) + "/metrics", timeout=10).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("intel_items_finished_total", "intel_jobs_finished_total"):
                values[(sample.name, sample.labels["status"])] = sample.value
            if sample.name in ("intel_jobs", "intel_queue_depth", "intel_items_running"):
                values[(sample.name, sample.labels.get("status", ""))] = sample.value
            if sample.name == "intel_workers_alive":
                values[(sample.name, sample.labels["role"])] = sample.value
    return values


def test_a_cluster_of_hosts_survives_a_partition_a_killed_api_and_a_redis_restart(
    tmp_path: Path, stand_in_model: Path
) -> None:
    zips = photo_zips()
    started = time.monotonic()
    with deployed(tmp_path, stand_in_model) as deployment:
        ready = time.monotonic()
        api1, api2 = deployment.apis
        worker1 = deployment.workers[0]
        jobs = [submit(deployment, deployment.apis[i % 2], body) for i, body in enumerate(zips[:4])]

        # 1. A partition: worker 1 cut off while it holds items, past its lease.
        held = cut_while_holding(deployment, worker1)
        cut_at = time.monotonic()
        # 2. Meanwhile API host 2 dies half-way through an upload, and comes back.
        upload_killed_halfway(deployment, api2)
        jobs += [submit(deployment, deployment.apis[i % 2], body)
                 for i, body in enumerate(zips[4:7])]  # fmt: skip
        # Past the lease, the other worker takes back what worker 1 held, and finishes it.
        try:
            wait_for(lambda: finished_by(deployment, held) == {"worker2"}, 120,
                     "the cut-off worker's items to be finished by the other")  # fmt: skip
        except TimeoutError:  # who finished them says which race it was
            raise AssertionError(f"held {sorted(held)}: {finished_by(deployment, held)}") from None
        time.sleep(max(0.0, LEASE_SECONDS + 2 - (time.monotonic() - cut_at)))
        deployment.cluster.reconnect(worker1)
        cut_seconds = time.monotonic() - cut_at

        # 3. Redis loses everything it held, and comes back empty.
        deployment.data.kill(deployment.processes["redis"])
        time.sleep(1)
        deployment.start_redis()
        jobs += [submit(deployment, deployment.apis[i % 2], body)
                 for i, body in enumerate(zips[7:])]  # fmt: skip

        def all_final() -> bool:
            rows = deployment.query(
                "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status NOT IN "
                "('succeeded', 'failed', 'cancelled')",
                jobs,
            )
            return bool(rows[0][0] == 0)

        wait_for(all_final, 300, "every job to end", interval=1)
        finished = time.monotonic()

        # Every job succeeded and holds each of its photos once, all from one model.
        statuses = deployment.query("SELECT id, status FROM jobs WHERE id = ANY(%s)", jobs)
        assert sorted(statuses) == sorted((job, "succeeded") for job in jobs)
        per_job = deployment.query(
            "SELECT job_id, count(*), count(DISTINCT filename), count(DISTINCT model_version), "
            "count(*) FILTER (WHERE status = 'succeeded' AND class IS NOT NULL) "
            "FROM items WHERE job_id = ANY(%s) GROUP BY job_id",
            jobs,
        )
        assert len(per_job) == JOBS
        full = (PHOTOS_PER_JOB, PHOTOS_PER_JOB, 1, PHOTOS_PER_JOB)
        assert all(tuple(row[1:]) == full for row in per_job), per_job

        # The half-received zip made no job: every job in the database is one we were given.
        assert sorted(row[0] for row in deployment.query("SELECT id FROM jobs")) == sorted(jobs)

        # What worker 1 held was finished by worker 2, and stayed so after worker 1 returned.
        assert finished_by(deployment, held) == {"worker2"}

        # Nothing was written or counted twice: the counters equal the rows.
        items_total = PHOTOS_PER_JOB * JOBS
        counters = dict(deployment.query(
            "SELECT labels, value FROM metric_counters WHERE name = 'intel_items_finished'"
        ))  # fmt: skip
        assert sum(counters.values()) == items_total, counters

        # Both API hosts report what the database holds.
        for api in deployment.apis:
            reported = metrics_of(deployment, api)
            assert reported[("intel_items_finished_total", "succeeded")] == items_total
            assert reported[("intel_jobs_finished_total", "succeeded")] == JOBS
            assert reported[("intel_jobs", "succeeded")] == JOBS
            assert reported[("intel_queue_depth", "")] == 0
            assert reported[("intel_items_running", "")] == 0

        # The reconnected worker is back, not exited or wedged: it beats again.
        assert not _died(deployment, f"worker-{worker1.name}"), deployment.log("worker-worker1")
        wait_for(lambda: metrics_of(deployment, api1)[("intel_workers_alive", "classify")] == 2,
                 30, "both workers to beat")  # fmt: skip
        print(
            f"\ncluster: ready in {ready - started:.0f}s; {items_total} photos in {JOBS} jobs "
            f"over 2 API hosts in {finished - ready:.0f}s; worker1 cut {cut_seconds:.0f}s "
            f"holding {len(held)} items; API host 2 killed mid-upload; Redis restarted"
        )
