"""The client against a real running service (`serve` with API keys on, real images)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from client import Client, ClientError, Job
from shared.classifier.labels import CLASSES
from testkit.processes import Service, free_port
from tests.conftest import holdout_sample

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def photos(
    train_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, str]]:
    """A folder as a user has one: subfolders of real photos, and a stray text file."""
    folder = tmp_path_factory.mktemp("album") / "holiday"
    expected = {}
    for index, image in enumerate(holdout_sample(train_dir, 1)):
        label = CLASSES[image.label]
        name = f"holiday/{'day1' if index % 2 else 'day2'}/{label}-{image.path.name}"
        target = folder.parent / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image.path, target)
        expected[name] = label
    (folder / "notes.txt").write_text("not a photo")
    return folder, expected


def run_cli(service: Service, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "intel_classifier", *args, "--server", service.url],
        env={**service.env, "INTEL_CLASSIFIER_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_submit_a_folder_wait_and_get_a_csv(
    keyed_service: tuple[Service, str], photos: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    service, key = keyed_service
    folder, expected = photos
    output = tmp_path / "results.csv"
    done = run_cli(service, key, "submit", str(folder), "--wait", "--output", str(output))
    assert done.returncode == 1, done.stderr  # notes.txt failed, so the exit status says so
    with output.open() as handle:
        rows = {row["filename"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {*expected, "holiday/notes.txt"}
    assert rows["holiday/notes.txt"]["status"] == "failed"
    assert rows["holiday/notes.txt"]["error"] == "not an image"
    assert {name: rows[name]["class"] for name in expected} == expected
    summary = dict(line.split() for line in done.stdout.splitlines())
    assert summary == {**{label: "1" for label in expected.values()}, "failed": "1"}
    assert f"wrote {output}" in done.stderr
    # --wait names the files that failed, and why.
    assert "failed:\n  holiday/notes.txt: not an image" in done.stderr


def test_images_only_exit_0_and_json_output(
    keyed_service: tuple[Service, str], photos: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    service, key = keyed_service
    folder, expected = photos
    images = [str(folder.parent / name) for name in list(expected)[:2]]
    output = tmp_path / "results.json"
    done = run_cli(service, key, "submit", *images, "--wait", "--output", str(output))
    assert done.returncode == 0, done.stderr
    items = json.loads(output.read_text())
    assert [item["class"] for item in items] == [expected[n] for n in list(expected)[:2]]


def test_status_results_and_cancel_commands(
    keyed_service: tuple[Service, str], photos: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    service, key = keyed_service
    folder, expected = photos
    one = str(folder.parent / next(iter(expected)))
    submitted = run_cli(service, key, "submit", one)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    with Client(service.url, key) as client:
        client.wait(job_id, timeout=120)
    status = run_cli(service, key, "status", job_id)
    assert status.stdout.startswith(f"job {job_id}: succeeded, 1/1 done")
    raw = json.loads(run_cli(service, key, "status", job_id, "--json").stdout)
    assert raw["id"] == job_id
    results = run_cli(service, key, "results", job_id)
    assert results.stdout.splitlines()[0].startswith("filename,status,class,confidence")
    assert len(results.stdout.splitlines()) == 2
    cancel = run_cli(service, key, "cancel", job_id)
    assert cancel.returncode == 3  # refused by the service, in its words, naming the URL
    assert (
        f"error: POST {service.url}/jobs/{job_id}/cancel: job {job_id} already finished "
        "with status succeeded (HTTP 409)"
    ) in cancel.stderr
    refused = run_cli(service, "ick_00000000_wrong", "status", job_id)
    assert refused.returncode == 3
    assert f"error: GET {service.url}/jobs/{job_id}: the API key is not valid" in refused.stderr
    # A wrong --server path: the URL asked for is named, whatever answered it.
    astray = subprocess.run(
        [sys.executable, "-m", "intel_classifier", "status", job_id,
         "--server", f"{service.url}/v9"],
        env={**service.env, "INTEL_CLASSIFIER_API_KEY": key},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert astray.returncode == 3
    assert f"error: GET {service.url}/v9/jobs/{job_id}: " in astray.stderr
    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = subprocess.run(
        [sys.executable, "-m", "intel_classifier", "status", job_id, "--server", nobody],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 3
    assert f"error: cannot reach the service at {nobody}" in unreachable.stderr
    assert "make run" in unreachable.stderr


def test_submit_refuses_what_it_cannot_use_before_uploading(
    keyed_service: tuple[Service, str], photos: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    service, key = keyed_service
    folder, _ = photos
    with Client(service.url, key) as client:
        before = client.http.get("/jobs", params={"limit": 500}).json()["items"]
    unwaited = run_cli(service, key, "submit", str(folder), "--output", str(tmp_path / "r.csv"))
    assert unwaited.returncode == 2
    assert "error: --output needs --wait" in unwaited.stderr
    spreadsheet = run_cli(
        service, key, "submit", str(folder), "--wait", "--output", str(tmp_path / "r.xlsx")
    )
    assert spreadsheet.returncode == 2
    assert "error: --output must end in .csv, .json or .jsonl, not r.xlsx" in spreadsheet.stderr
    hookless = run_cli(service, key, "submit", str(folder), "--webhook-url", "ftp://x")
    assert hookless.returncode == 2
    with Client(service.url, key) as client:
        after = client.http.get("/jobs", params={"limit": 500}).json()["items"]
    assert after == before  # nothing was uploaded


def test_the_python_client(
    keyed_service: tuple[Service, str], photos: tuple[Path, dict[str, str]]
) -> None:
    service, key = keyed_service
    folder, expected = photos
    uploads: list[tuple[int, int]] = []
    seen: list[Job] = []
    with Client(service.url, api_key=key) as client:
        job = client.submit(
            folder, metadata={"album": "holiday"}, on_upload=lambda *a: uploads.append(a)
        )
        assert job.total == len(expected) + 1
        assert job.raw["metadata"] == {"album": "holiday"}
        final = client.wait(job, on_progress=seen.append, poll_seconds=0.1, timeout=180)
        results = client.results(final)
        with pytest.raises(ClientError) as refused:
            client.cancel(final)
    assert uploads
    assert uploads[-1][0] == uploads[-1][1] > 0
    assert seen[-1] == final
    assert final.is_final
    assert [s.done for s in seen] == sorted(s.done for s in seen)  # progress only grows
    assert (final.status, final.succeeded, final.failed) == (
        "partially_succeeded",
        len(expected),
        1,
    )
    by_name: dict[str, Any] = {r.filename: r for r in results}
    assert {n: by_name[n].label for n in expected} == expected
    assert all(0 < by_name[n].confidence <= 1 for n in expected)
    assert refused.value.status == 409
    assert "already finished" in refused.value.message
    with Client(service.url) as anonymous, pytest.raises(ClientError) as no_key:
        anonymous.job(final)
    assert no_key.value.status == 401
