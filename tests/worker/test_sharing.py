"""Sharing two workers on Postgres: fair shares, the interactive lane, attempts, stalls.

Real API and two real Celery workers on Redis + Postgres with keys on, real
photos; the workers run the stand-in model (`testkit.stand_in`), so the backlogs
last as long on every CPU. Each test reads what the database recorded (counts, attempts,
heartbeats), never how long something took.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import create_engine, func, select

from shared.db.models import Batch, Item, JobStatus, WorkerHeartbeat
from shared.training.dataset import list_labelled_images
from testkit.processes import Process, Service, free_port, service_env, wait_for
from tests.conftest import fresh_postgres_database, zip_bytes

pytestmark = pytest.mark.model

BATCH = 8  # INFERENCE_BATCH_SIZE in service_env
# What one worker holds at most: two groups on the engine and one decoding, of up to
# a batch each (worker.batching.group_size).
HELD = 3 * BATCH
WORKERS = 2


class Cluster:
    def __init__(self, service: Service, database_url: str, workers: list[Process]) -> None:
        self.service = service
        self.engine = create_engine(database_url)
        self.workers = workers

    def tenant(self, name: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.service.url,
            timeout=120,
            headers={"Authorization": f"Bearer {self.service.new_key(name)}"},
        )

    def scalar(self, query: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(query).scalar()

    def last_beat(self, worker: Process) -> Any:
        """When the worker whose Celery main process is `worker` last beat (None: never)."""
        name = f"classify@{socket.gethostname()}:{worker.popen.pid}"
        return self.scalar(select(WorkerHeartbeat.seen_at).where(WorkerHeartbeat.name == name))


@pytest.fixture(scope="module")
def cluster(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, stand_in_model: Path
) -> Iterator[Cluster]:
    data_dir = tmp_path_factory.mktemp("sharing")
    redis.Redis.from_url(redis_url).flushdb()  # no other module's messages
    with fresh_postgres_database() as database_url:
        env = service_env(
            data_dir,
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            AUTH_ENABLED="true",
            MODEL_PATH=str(stand_in_model),  # these tests are about sharing, not answers
            HEARTBEAT_INTERVAL_SECONDS="1",
            WORKER_STALE_SECONDS="5",
            REQUEUE_AFTER_SECONDS="4",
        )
        service = Service(env, data_dir, free_port())
        service.migrate()
        try:
            service.start_api()
            workers = [service.start_worker() for _ in range(WORKERS)]
            yield Cluster(service, database_url, workers)
        finally:
            service.stop()


@pytest.fixture(scope="module")
def photos(train_dir: Path) -> list[bytes]:
    """Distinct photos, handed out once each: no result is reused from another test."""
    images = list_labelled_images(train_dir)[::7]
    return [image.path.read_bytes() for image in images]


def take(photos: list[bytes], n: int) -> list[bytes]:
    taken = photos[:n]
    del photos[:n]
    assert len(taken) == n
    return taken


def send_zip(client: httpx.Client, images: list[bytes]) -> str:
    archive = zip_bytes({f"{i:04d}.jpg": data for i, data in enumerate(images)})
    response = client.post("/jobs", files={"file": ("photos.zip", archive)})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def finished(client: httpx.Client, job_ids: list[str]) -> int:
    total = 0
    for job_id in job_ids:
        job = client.get(f"/jobs/{job_id}").json()
        total += job["succeeded"] + job["failed"]
    return total


def wait_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        return job if JobStatus(job["status"]).is_final else None

    result: dict[str, Any] = wait_for(ended, 600, f"job {job_id}", 0.2)
    return result


def test_a_tenant_share_follows_the_tenant_not_its_number_of_jobs(
    cluster: Cluster, photos: list[bytes]
) -> None:
    one_zip, many_jobs = cluster.tenant("one-zip"), cluster.tenant("many-jobs")
    per_tenant = 120
    a_images, m_images = take(photos, per_tenant), take(photos, per_tenant)
    a_jobs = [send_zip(one_zip, a_images)]
    m_jobs = [send_zip(many_jobs, m_images[i : i + 10]) for i in range(0, per_tenant, 10)]
    gaps: list[int] = []

    def both_busy() -> bool:
        a_done, m_done = finished(one_zip, a_jobs), finished(many_jobs, m_jobs)
        if a_done < per_tenant and m_done < per_tenant:
            gaps.append(m_done - a_done)
            return False
        return True

    wait_for(both_busy, 600, "either tenant to finish", 0.5)
    assert len(gaps) >= 3, "too few samples while both had work"
    # Each batch is split evenly between the two: the gap stays within what the
    # two workers hold at once (two groups on the engine and one decoding, each, of
    # up to a batch), where before, the tenant with 12 jobs took ever more.
    in_flight = WORKERS * HELD
    assert max(abs(gap) for gap in gaps) <= in_flight, gaps


def test_predict_goes_ahead_of_a_backlog(cluster: Cluster, photos: list[bytes]) -> None:
    heavy, interactive = cluster.tenant("heavy"), cluster.tenant("interactive")
    # Far more than the calls take to answer (about 6 s of work for the two workers
    # against five calls of a few hundred ms each); cancelled once they have answered.
    size = 400
    backlog = [send_zip(heavy, take(photos, size))]
    wait_for(lambda: finished(heavy, backlog) >= 2 * BATCH, 300, "the backlog to start")
    overtaken: list[int] = []
    for image in take(photos, 5):
        before = finished(heavy, backlog)
        response = interactive.post("/predict", files={"file": ("one.jpg", image)})
        assert response.status_code == 200, response.text
        overtaken.append(finished(heavy, backlog) - before)
    assert finished(heavy, backlog) < size, "the backlog ended before the calls: no evidence"
    assert heavy.post(f"/jobs/{backlog[0]}/cancel").status_code == 200
    # A call waits for at most the groups each worker already had in hand.
    assert max(overtaken) <= WORKERS * HELD, overtaken


def test_a_killed_worker_charges_only_what_was_in_its_pass(
    cluster: Cluster, photos: list[bytes]
) -> None:
    client = cluster.tenant("survivor")
    job_id = send_zip(client, take(photos, 96))
    wait_for(lambda: finished(client, [job_id]) >= BATCH, 300, "a first batch")
    victim = cluster.workers.pop(0)
    victim.stop(signal.SIGKILL)
    job = wait_job(client, job_id)
    cluster.workers.append(cluster.service.start_worker())
    assert (job["status"], job["succeeded"]) == ("succeeded", 96), job
    charged_twice = cluster.scalar(
        select(func.count()).where(Item.job_id == job_id, Item.attempts > 1)
    )
    # Only the items in its decode or forward pass were charged: what it held at most.
    assert charged_twice <= HELD


def test_a_stalled_worker_stops_beating_and_its_items_go_to_the_other(
    cluster: Cluster, photos: list[bytes]
) -> None:
    client = cluster.tenant("stalled")
    job_id = send_zip(client, take(photos, 96))
    wait_for(lambda: finished(client, [job_id]) >= BATCH, 300, "a first batch")
    stalled = cluster.workers[0]

    os.kill(stalled.popen.pid, signal.SIGSTOP)  # its pool child runs on, but nothing reaches it
    try:
        # Within MAIN_STALE_SECONDS (3 s) and a beat, the child sees its main process
        # stopped: it takes no more work and beats no more.
        threading.Event().wait(3 + 1 + 1)
        last = cluster.last_beat(stalled)
        threading.Event().wait(3)
        assert last is not None
        assert cluster.last_beat(stalled) == last, (
            "a worker whose main process is stopped still beats"
        )
        job = wait_job(client, job_id)  # the other worker takes over
        assert (job["status"], job["succeeded"]) == ("succeeded", 96), job
    finally:
        os.kill(stalled.popen.pid, signal.SIGCONT)
    # Woken, it finds its own heartbeat stale and exits to be restarted, as serve's
    # supervisor would; the next tests get a fresh worker in its place.
    wait_for(lambda: stalled.popen.poll() is not None, 60, "the stalled worker to exit")
    cluster.workers[0] = cluster.service.start_worker()
    # Each item has exactly one result, whichever worker wrote it.
    assert cluster.scalar(select(func.count()).where(Item.job_id == job_id)) == 96


def test_a_worker_whose_pool_child_hangs_exits_to_be_restarted(cluster: Cluster) -> None:
    """A child stuck (in a forward pass, say) beats no more; its worker's main process
    sees the heartbeat go stale and exits, for whatever runs it to start a fresh one."""
    extra = cluster.service.start_worker()
    wait_for(lambda: cluster.last_beat(extra), 60, "its first beat")
    children = Path(f"/proc/{extra.popen.pid}/task/{extra.popen.pid}/children").read_text().split()
    [child] = [int(pid) for pid in children]
    os.kill(child, signal.SIGSTOP)
    wait_for(lambda: extra.popen.poll() is not None, 60, "the stalled worker to exit")
    assert extra.popen.returncode == 1
    assert "makes no progress" in extra.output()


def test_every_idle_worker_joins_in_on_one_big_job(cluster: Cluster, photos: list[bytes]) -> None:
    client = cluster.tenant("one-big-zip")
    job_id = send_zip(client, take(photos, 120))
    job = wait_job(client, job_id)
    assert (job["status"], job["succeeded"]) == ("succeeded", 120), job
    workers = cluster.scalar(
        select(func.count(func.distinct(Batch.worker)))
        .select_from(Item)
        .join(Batch, Batch.id == Item.batch_id)
        .where(Item.job_id == job_id)
    )
    assert workers == WORKERS  # not only the one its message woke


def test_a_worker_told_to_stop_finishes_what_it_holds_and_claims_no_more(
    cluster: Cluster, photos: list[bytes]
) -> None:
    """SIGTERM (a deploy, a scale-in): the groups it holds finish, the rest of its turn
    is left to the others, uncharged, and it exits cleanly."""
    client = cluster.tenant("deployed")
    leaving = cluster.service.start_worker()
    pid = leaving.popen.pid
    [child] = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    name = f"{socket.gethostname()}:{child}"  # the pool child's leases and batches
    ran_by_it = (
        select(func.count())
        .select_from(Item)
        .join(Batch, Batch.id == Item.batch_id)
        .where(Batch.worker == name)
    )
    job_id = send_zip(client, take(photos, 160))
    wait_for(lambda: cluster.scalar(ran_by_it) >= BATCH, 300, "its first groups")
    signalled = datetime.now(UTC)
    leaving.popen.send_signal(signal.SIGTERM)
    wait_for(lambda: leaving.popen.poll() is not None, 120, "the worker to exit")
    job = wait_job(client, job_id)
    assert (job["status"], job["succeeded"]) == ("succeeded", 160), job
    assert leaving.popen.returncode == 0
    # What it finished after the signal is what it held then: two groups on the engine,
    # one decoding, and one it may have been claiming (groups of up to BATCH). A task
    # that ran out its turn would have gone on for its TASK_SECONDS: the whole job.
    finished_after = cluster.scalar(ran_by_it.where(Item.finished_at > signalled))
    assert finished_after <= 4 * BATCH, leaving.output()[-3000:]
    charged_twice = cluster.scalar(
        select(func.count()).where(Item.job_id == job_id, Item.attempts > 1)
    )
    assert charged_twice == 0  # nothing it held was taken back, nothing left was charged
