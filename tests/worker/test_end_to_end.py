"""The whole service as users run it: real API and Celery worker processes, real images.

Once on Redis + Postgres with separate `api` and `worker` processes, once on the
embedded defaults (`serve`: SQLite, local files, the filesystem broker).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from shared.classifier import artifact
from shared.classifier.labels import CLASSES
from shared.db.models import Batch, utcnow
from shared.settings import DEFAULT_MODEL_PATH
from shared.training.dataset import LabelledImage, list_labelled_images
from shared.training.evaluation import select_holdout
from testkit.processes import Service, error_of, free_port, running_serve, service_env, wait_for
from tests.conftest import fresh_postgres_database, zip_bytes

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def holdout_images(train_dir: Path) -> list[LabelledImage]:
    """Two images per class that the shipped model never trained on."""
    manifest = artifact.read_any_manifest(DEFAULT_MODEL_PATH)
    chosen: list[LabelledImage] = []
    for image in select_holdout(list_labelled_images(train_dir), manifest):
        if sum(c.label == image.label for c in chosen) < 2:
            chosen.append(image)
    return chosen


@pytest.fixture(scope="module", params=["redis+postgres", "embedded"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp(request.param.replace("+", "-"))
    if request.param == "embedded":
        with running_serve(data_dir) as embedded:
            yield embedded
        return
    redis_url = request.getfixturevalue("redis_url")
    with fresh_postgres_database() as database_url:
        env = service_env(
            data_dir, DATABASE_URL=database_url, REDIS_URL=redis_url, LOG_FORMAT="json"
        )
        service = Service(env, data_dir, free_port())
        service.migrate()
        try:
            service.start_api()
            service.start_worker()
            yield service
        finally:
            service.stop()


def _alpha_png(path: Path) -> bytes:
    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    rgba.putalpha(200)
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    return buffer.getvalue()


def test_zip_of_real_and_broken_files(
    service: Service, holdout_images: list[LabelledImage]
) -> None:
    expected = {
        f"photos/{CLASSES[i.label]}/{i.path.name}": CLASSES[i.label] for i in holdout_images
    }
    entries = {
        name: Path(img.path).read_bytes()
        for name, img in zip(expected, holdout_images, strict=True)
    }
    alpha_source = holdout_images[0]
    entries["photos/alpha.png"] = _alpha_png(alpha_source.path)
    truncated = holdout_images[1].path.read_bytes()
    entries["photos/truncated.jpg"] = truncated[: len(truncated) // 2]
    entries["photos/readme.txt"] = b"these are my holiday photos"

    with service.client() as client:
        response = client.post("/jobs", files={"file": ("photos.zip", zip_bytes(entries))})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        job = service.wait_job(job_id)
        assert job["status"] == "partially_succeeded", service.logs()
        assert (job["total"], job["succeeded"], job["failed"]) == (15, 13, 2)
        assert job["progress"] == 1.0
        manifest = artifact.read_any_manifest(DEFAULT_MODEL_PATH)
        assert isinstance(manifest, artifact.FineTunedManifest)
        assert job["model_version"] == manifest.version_for(manifest.serving.precision)
        assert sum(job["summary"].values()) == 13

        pages: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = client.get(
                f"/jobs/{job_id}/results", params={"limit": 4, "cursor": cursor}
            ).json()
            pages += page["items"]
            if (cursor := page["next_cursor"]) is None:
                break
        by_name = {item["filename"]: item for item in pages}
        assert list(by_name) == list(entries)  # every file once, in upload order

        assert by_name["photos/readme.txt"]["status"] == "failed"
        assert by_name["photos/readme.txt"]["error"] == "not an image"
        assert by_name["photos/truncated.jpg"]["status"] == "failed"
        assert "photos/truncated.jpg" in by_name["photos/truncated.jpg"]["error"]
        assert by_name["photos/alpha.png"]["status"] == "succeeded"
        correct = sum(by_name[name]["class"] == label for name, label in expected.items())
        assert correct >= len(expected) - 1, [(n, by_name[n]["class"]) for n in expected]
        for item in pages:
            if item["status"] == "succeeded":
                assert set(item["scores"]) == set(CLASSES)
                assert item["confidence"] == max(item["scores"].values())

        csv_rows = list(
            csv.DictReader(
                io.StringIO(client.get(f"/jobs/{job_id}/results", params={"format": "csv"}).text)
            )
        )
        jsonl_rows = [
            json.loads(line)
            for line in client.get(
                f"/jobs/{job_id}/results", params={"format": "jsonl"}
            ).text.splitlines()
        ]
        assert jsonl_rows == pages
        assert [(r["filename"], r["status"], r["class"]) for r in csv_rows] == [
            (i["filename"], i["status"], i["class"] or "") for i in pages
        ]
        for row, item in zip(csv_rows, pages, strict=True):
            if item["confidence"] is not None:
                assert float(row["confidence"]) == pytest.approx(item["confidence"], abs=1e-6)
        # Only the failures, or only one class, on request.
        failed = client.get(f"/jobs/{job_id}/results", params={"status": "failed"}).json()
        assert [i["filename"] for i in failed["items"]] == [
            "photos/truncated.jpg",
            "photos/readme.txt",
        ]
        forest = client.get(f"/jobs/{job_id}/results", params={"class": "forest"}).json()
        assert len(forest["items"]) == job["summary"].get("forest", 0)
        assert {i["class"] for i in forest["items"]} <= {"forest"}

        # A retry runs again what failed in a worker; what was refused at upload stays out.
        retried = client.post(f"/jobs/{job_id}/retry")
        assert retried.status_code == 202, retried.text
        retry = retried.json()
        assert (retry["retry_of"], retry["total"]) == (job_id, 1)
        assert retried.headers["Location"] == f"/jobs/{retry['id']}"
        again = service.wait_job(retry["id"])
        assert (again["status"], again["failed"]) == ("failed", 1)
        (item,) = client.get(f"/jobs/{retry['id']}/results").json()["items"]
        assert item["filename"] == "photos/truncated.jpg"
        assert item["error"] == by_name["photos/truncated.jpg"]["error"]
    # Uploads are deleted once their items succeed (KEEP_UPLOADS is off); a failed
    # item's stays until its job expires, so a retry can run it.
    folder = service.data_dir / "uploads" / job_id
    if folder.exists():  # on the embedded path; S3 and others keep the same rule
        assert len(list(folder.iterdir())) == 1


def test_a_retry_needs_a_failure_that_can_run_again(
    service: Service, holdout_images: list[LabelledImage]
) -> None:
    photo = holdout_images[2].path.read_bytes()
    with service.client() as client:
        clean = client.post("/jobs", files={"file": ("one.jpg", photo)}).json()
        refused = client.post(
            "/jobs", files={"file": ("two.zip", zip_bytes({"a.jpg": photo, "b.txt": b"notes"}))}
        ).json()
        service.wait_job(clean["id"])
        service.wait_job(refused["id"])
        nothing = error_of(client.post(f"/jobs/{clean['id']}/retry"), 409)
        assert nothing["message"] == f"job {clean['id']} has no failed items to retry"
        # b.txt was refused at upload: it has no stored file and would fail the same way.
        hopeless = error_of(client.post(f"/jobs/{refused['id']}/retry"), 409)
        assert "refused at upload" in hopeless["message"]


def test_usage_counts_classified_reused_and_failed_images(
    service: Service, holdout_images: list[LabelledImage]
) -> None:
    # Bytes after the JPEG's end change its digest, not its pixels: no test sent these.
    photo = holdout_images[3].path.read_bytes() + b"usage-test"

    def today() -> dict[str, int]:
        total: dict[str, int] = service.client().get("/usage").json()["total"]
        return total

    before = today()
    with service.client() as client:
        first = client.post("/jobs", files={"file": ("x.jpg", photo)}).json()
        service.wait_job(first["id"])
        # The same photo again is reused (its stored result); the text file fails.
        archive = zip_bytes({"again.jpg": photo, "notes.txt": b"notes"})
        second = client.post("/jobs", files={"file": ("y.zip", archive)}).json()
        service.wait_job(second["id"])
    after = today()
    delta = {name: after[name] - before[name] for name in ("classified", "reused", "failed")}
    assert delta == {"classified": 2, "reused": 1, "failed": 1}


def test_the_old_demo_call_still_works(
    service: Service, holdout_images: list[LabelledImage]
) -> None:
    image = next(i for i in holdout_images if CLASSES[i.label] == "forest")
    response = httpx.post(
        f"{service.url}/predict", files={"file": ("image.jpg", image.path.read_bytes())}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["class"] == "forest"
    assert 0.5 < body["confidence"] <= 1.0
    # /predict's jobs are told apart from uploads to /jobs, and can be filtered.
    predicted = httpx.get(f"{service.url}/jobs", params={"source": "predict"}).json()["items"]
    assert body["job_id"] in {job["id"] for job in predicted}
    assert {job["source"] for job in predicted} == {"predict"}
    uploaded = httpx.get(f"{service.url}/jobs", params={"source": "jobs"}).json()["items"]
    assert body["job_id"] not in {job["id"] for job in uploaded}
    broken = httpx.post(
        f"{service.url}/predict", files={"file": ("x.jpg", b"\xff\xd8\xff")}, timeout=60
    )
    assert broken.status_code in {415, 422}
    assert "x.jpg" in broken.json()["error"]["message"]
    # Decodable header, truncated body: the worker's reason, said once.
    whole = image.path.read_bytes()
    truncated = httpx.post(
        f"{service.url}/predict", files={"file": ("cut.jpg", whole[: len(whole) // 2])}, timeout=60
    )
    error = truncated.json()["error"]
    assert (truncated.status_code, error["code"]) == (422, "unreadable_image")
    assert error["message"].count("cannot read image") == 1, error["message"]
    assert "cut.jpg" in error["message"]


def test_models_lists_the_live_version_and_jobs_are_pinned_to_it(
    service: Service, holdout_images: list[LabelledImage]
) -> None:
    image = holdout_images[-1].path.read_bytes()
    with service.client() as client:

        def listed() -> dict[str, Any] | None:
            body: dict[str, Any] = client.get("/models").json()
            return body if body["items"] else None

        models = wait_for(listed, 30, "a live model in GET /models")
        [model] = models["items"]
        assert models["new_jobs_get"] == model["version"]
        assert model["new_jobs"] is True
        assert (model["precision"], model["live_workers"]) == ("int8", 1)
        assert model["test_accuracy"] == pytest.approx(0.929, abs=0.005)  # its metrics.json
        refused = client.post(
            "/jobs", files={"file": ("a.jpg", image)}, data={"model": "retired-v0"}
        )
        assert refused.status_code == 422, refused.text
        assert "GET /models" in refused.json()["error"]["message"]
        created = client.post(
            "/jobs", files={"file": ("a.jpg", image)}, data={"model": model["version"]}
        )
        assert created.status_code == 202, created.text
        assert created.json()["model_version"] == model["version"]  # pinned at admission
    job = service.wait_job(created.json()["id"])
    assert (job["status"], job["model_version"]) == ("succeeded", model["version"])


def test_concurrent_single_image_jobs_share_batches(service: Service, train_dir: Path) -> None:
    # Images no other test sends: known bytes would reuse stored results, not batch.
    images = [i.path.read_bytes() for i in list_labelled_images(train_dir)[-24:]]

    def submit(data: bytes) -> str:
        response = httpx.post(f"{service.url}/jobs", files={"file": ("one.jpg", data)}, timeout=60)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    started = utcnow()
    with ThreadPoolExecutor(max_workers=8) as pool:
        job_ids = list(pool.map(submit, images))
    for job_id in job_ids:
        assert service.wait_job(job_id)["status"] == "succeeded"
    database = service.env.get("DATABASE_URL") or f"sqlite:///{service.data_dir / 'intel.db'}"
    engine = create_engine(database)
    with Session(engine) as session:
        recorded = session.scalars(select(Batch).where(Batch.created_at >= started)).all()
        batches = [(batch.size, batch.jobs) for batch in recorded]
    engine.dispose()
    assert sum(size for size, _ in batches) == len(images)
    assert max(size for size, _ in batches) > 1, batches
    assert max(jobs for _, jobs in batches) > 1, batches  # one forward pass, several jobs
    worker_logs = "".join(p.output() for p in service.processes if p.name in {"worker", "serve"})
    assert worker_logs.count("loaded in worker") == 1  # once at start, never per task


def test_cancel_stops_a_running_job_and_keeps_its_results(
    service: Service, train_dir: Path
) -> None:
    fresh = list_labelled_images(train_dir)[-72:-24]  # not sent by any other test
    entries = {i.name: i.path.read_bytes() for i in fresh}
    with service.client() as client:
        job_id = client.post("/jobs", files={"file": ("many.zip", zip_bytes(entries))}).json()["id"]
        wait_for(
            lambda: client.get(f"/jobs/{job_id}").json()["succeeded"] > 0, 120, "a first batch"
        )
        cancelled = client.post(f"/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        final = service.wait_job(job_id)

        def settled() -> dict[str, Any] | None:
            # Items first: the job read after them is at least as new (one transaction
            # writes a batch's items and the job's counts).
            items = client.get(f"/jobs/{job_id}/results", params={"limit": 1000}).json()["items"]
            if any(i["status"] in {"queued", "running"} for i in items):
                return None
            job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
            return job

        job = wait_for(settled, 60, "the batch in flight to land")
    assert final["status"] == job["status"] == "cancelled"
    assert job["skipped"] > 0
    assert job["succeeded"] + job["failed"] + job["skipped"] == job["total"] == 48


def test_identical_images_reuse_stored_results(service: Service, train_dir: Path) -> None:
    images = list_labelled_images(train_dir)[-75:-72]  # not sent by any other test
    with service.client() as client:
        ids = []
        for name in ("first.zip", "again.zip"):
            entries = {f"{name}-{i.path.name}": i.path.read_bytes() for i in images}
            job_id = client.post("/jobs", files={"file": (name, zip_bytes(entries))}).json()["id"]
            assert service.wait_job(job_id)["status"] == "succeeded"
            ids.append(job_id)
        first, again = (client.get(f"/jobs/{i}/results").json()["items"] for i in ids)
    assert [item["reused"] for item in first] == [False] * 3
    assert [item["reused"] for item in again] == [True] * 3
    assert [i["scores"] for i in again] == [i["scores"] for i in first]


def test_metrics_agree_with_the_database(service: Service) -> None:
    """Runs last: every job the module made has ended, and /metrics counted each once."""
    with service.client() as client:
        jobs = client.get("/jobs", params={"limit": 500}).json()["items"]
        assert all(job["status"] not in {"queued", "running"} for job in jobs)
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    for status in ("succeeded", "partially_succeeded", "failed", "cancelled"):
        expected = sum(job["status"] == status for job in jobs)
        assert value("intel_jobs_finished_total", status=status) == expected, status
        assert value("intel_jobs", status=status) == expected, status
    for status in ("succeeded", "failed", "skipped"):
        assert value("intel_items_finished_total", status=status) == sum(j[status] for j in jobs)
    assert value("intel_queue_depth") == 0
    assert value("intel_oldest_queued_item_age_seconds") == 0

    database = service.env.get("DATABASE_URL") or f"sqlite:///{service.data_dir / 'intel.db'}"
    engine = create_engine(database)
    with Session(engine) as session:
        batches = session.scalars(select(Batch)).all()
    engine.dispose()
    assert value("intel_batch_size_count") == len(batches)
    assert value("intel_batch_size_sum") == sum(batch.size for batch in batches)
    assert value("intel_batch_size_bucket", le="+Inf") == len(batches)
    assert value("intel_batch_inference_seconds_count") == len(batches)
    assert value("intel_batch_size_bucket", le="1") <= value("intel_batch_size_bucket", le="8")
    worker_handled = sum(j["succeeded"] for j in jobs)  # every success passed a worker
    assert value("intel_item_latency_seconds_count") >= worker_handled


def test_logs_carry_job_and_item_ids(service: Service) -> None:
    worker = next((p for p in service.processes if p.name == "worker"), None)
    if worker is None:  # embedded: text logs (the default), ids appended in brackets
        output = "".join(p.output() for p in service.processes)
        failed_lines = [line for line in output.splitlines() if "item failed" in line]
        assert failed_lines
        assert all("[job_id=" in line and " item_id=" in line for line in failed_lines)
        return
    lines = [line for line in worker.output().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert len(records) > 10
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    failed = [r for r in records if r["message"].startswith("item failed")]
    assert failed, "the truncated JPEG's failure is logged"
    assert all(r["job_id"] and r["item_id"] for r in failed)
    assert any(r.get("job_id") and r["message"].startswith("batch of") for r in records)
