"""Benchmarks, each a ratio to the old demo's way measured in the same run.

    python -m bench [--images 500] [--out bench/results]

1. baseline: Keras `load_img` + `model.predict`, one image per call (the old demo);
2. engine throughput of each backend by batch size, on preprocessed images;
3. end to end through the real service (API + worker processes, Redis, Postgres):
   a zip of N images from upload to the last stored result;
4. single-image job latency (POST /jobs to stored result) on an idle service;
5. POST /jobs rate while the worker is busy;
6. peak resident memory of the API and of the worker (model loaded);
7. sharing (bench/sharing.py): what one tenant's backlog costs the others.

Real images come from ../shared (INTEL_SHARED_DIR); every phase uses images no
earlier phase sent, so the service's reuse of known results cannot flatter it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import sharing
from bench.report import log
from shared.classifier.engine import Backend
from shared.classifier.loaded import Precision
from shared.classifier.model import load_classifier
from shared.classifier.preprocessing import preprocess
from shared.db.models import JobStatus
from shared.settings import DEFAULT_MODEL_PATH, PROJECT_ROOT, get_settings
from shared.training.dataset import list_labelled_images
from testkit.crafted import zip_of
from testkit.processes import Service, free_port, service_env, wait_for
from testkit.resources import BASE_WEIGHTS_FILE, TRAIN_DIR, fresh_postgres_database

BATCH_SIZES = (1, 8, 16, 32)
CACHE_DIR = get_settings().cache_dir
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def bench_baseline(paths: list[Path], weights: str) -> dict[str, Any]:
    """The old demo: load_img + preprocess_input + model.predict for each image."""
    import keras

    network = load_classifier(DEFAULT_MODEL_PATH, weights, "tensorflow").network
    assert network is not None  # the fp32 reference network, built with Keras

    def classify(path: Path) -> None:
        image = keras.utils.load_img(path, target_size=(299, 299))
        array = keras.applications.xception.preprocess_input(keras.utils.img_to_array(image)[None])
        network.predict(array, verbose=0)

    for path in paths[:2]:
        classify(path)
    started = time.perf_counter()
    for path in paths:
        classify(path)
    seconds = time.perf_counter() - started
    return {
        "images": len(paths),
        "seconds": round(seconds, 2),
        "images_per_s": len(paths) / seconds,
    }


def bench_engines(paths: list[Path], weights: str) -> list[dict[str, Any]]:
    arrays = np.stack([preprocess(p.read_bytes(), p.name, 299, 10**8) for p in paths])
    rows = []
    configs: list[tuple[str, Backend, Precision]] = [
        ("tensorflow", "tensorflow", "fp32"),
        ("openvino", "openvino", "fp32"),
        ("openvino-int8", "openvino", "int8"),  # the shipped form serving runs
    ]
    for backend, engine, precision in configs:
        classifier = load_classifier(
            DEFAULT_MODEL_PATH, weights, engine, cache_dir=CACHE_DIR, precision=precision
        )
        for batch_size in BATCH_SIZES:
            classifier.predict(arrays[:batch_size])  # warm-up: compile for this shape
            started = time.perf_counter()
            for start in range(0, len(arrays), batch_size):
                classifier.predict(arrays[start : start + batch_size])
            seconds = time.perf_counter() - started
            rows.append(
                {
                    "backend": backend,
                    "batch_size": batch_size,
                    "images": len(arrays),
                    "images_per_s": len(arrays) / seconds,
                }
            )
            log(f"engine {backend} batch {batch_size}: {rows[-1]['images_per_s']:.2f} img/s")
    return rows


def served_precision() -> str:
    """What INFERENCE_PRECISION=auto runs for the shipped model."""
    from shared.classifier.artifact import FineTunedManifest, read_any_manifest

    manifest = read_any_manifest(DEFAULT_MODEL_PATH)
    return manifest.serving.precision if isinstance(manifest, FineTunedManifest) else "fp32"


def _peak_rss_mib(pid: int) -> float:
    """Peak RSS of `pid` and its children added up: the worker's model lives in its pool child."""
    total = 0.0
    for process in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{process}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(child) for child in listing.read().split()]
    except OSError:
        return []


def _final(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
    return job if JobStatus(job["status"]).is_final else None


def bench_service(
    latency_paths: list[Path], e2e_paths: list[Path], busy_paths: list[Path], work: Path
) -> dict[str, Any]:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    with fresh_postgres_database() as database_url:
        # API and worker share this machine, as `serve` runs them: the worker is niced.
        env = service_env(work, DATABASE_URL=database_url, REDIS_URL=REDIS_URL, WORKER_NICE="10")
        env.pop("INFERENCE_BATCH_SIZE", None)  # the service's own default
        service = Service(env, work, free_port())
        subprocess.run([sys.executable, "-m", "intel_classifier", "migrate"], env=env, check=True)
        try:
            api = service.start_api()
            worker = service.start_worker()
            return _measure(
                service, api.popen.pid, worker.popen.pid, latency_paths, e2e_paths, busy_paths
            )
        finally:
            service.stop()


def _measure(
    service: Service,
    api_pid: int,
    worker_pid: int,
    latency_paths: list[Path],
    e2e_paths: list[Path],
    busy_paths: list[Path],
) -> dict[str, Any]:
    with service.client() as client:
        for path in latency_paths[:3]:  # warm-up: first inference, connections
            job_id = client.post("/jobs", files={"file": ("w.jpg", path.read_bytes())}).json()["id"]
            wait_for(lambda j=job_id: _final(client, j), 120, "warm-up", 0.01)

        latencies = []
        for path in latency_paths[3:]:
            started = time.perf_counter()
            job_id = client.post("/jobs", files={"file": ("one.jpg", path.read_bytes())}).json()[
                "id"
            ]
            job = wait_for(lambda j=job_id: _final(client, j), 120, "a single image", 0.005)
            latencies.append((time.perf_counter() - started) * 1000)
            assert job["status"] == "succeeded", job
        log(f"latency p50 {statistics.median(latencies):.0f} ms")

        archive = zip_of(e2e_paths)
        started = time.perf_counter()
        response = client.post("/jobs", files={"file": ("bench.zip", archive)})
        accepted = time.perf_counter() - started
        job_id = response.json()["id"]
        job = wait_for(lambda: _final(client, job_id), 900, "the zip", 0.05)
        e2e_seconds = time.perf_counter() - started
        assert job["succeeded"] == len(e2e_paths), job
        log(f"end to end {len(e2e_paths) / e2e_seconds:.2f} img/s")

        half = len(busy_paths) // 2
        busy_job = client.post(
            "/jobs", files={"file": ("busy.zip", zip_of(busy_paths[:half]))}
        ).json()
        wait_for(lambda: client.get(f"/jobs/{busy_job['id']}").json()["succeeded"] > 0, 120, "busy")
        singles = [p.read_bytes() for p in busy_paths[half:]]

        # Many clients at once, each on a kept-alive connection (one pool, eight at a time).
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        with httpx.Client(base_url=service.url, timeout=60, limits=limits) as pooled:

            def submit(data: bytes) -> int:
                return pooled.post("/jobs", files={"file": ("s.jpg", data)}).status_code

            submit(singles[0])
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=8) as pool:
                codes = list(pool.map(submit, singles[1:]))
            creation_seconds = time.perf_counter() - started
            codes.append(202)
        busy = client.get(f"/jobs/{busy_job['id']}").json()
        assert busy["status"] == "running", "the worker was not busy throughout"
        assert codes.count(202) == len(singles), codes
        client.post(f"/jobs/{busy_job['id']}/cancel")

    return {
        "latency_ms": {
            "n": len(latencies),
            "p50": statistics.median(latencies),
            "p95": float(np.percentile(latencies, 95)),
        },
        "end_to_end": {
            "images": len(e2e_paths),
            "upload_accepted_s": accepted,
            "seconds": e2e_seconds,
            "images_per_s": len(e2e_paths) / e2e_seconds,
        },
        "job_creation": {
            "jobs": len(singles),
            "seconds": creation_seconds,
            "jobs_per_s": len(singles) / creation_seconds,
        },
        "peak_rss_mib": {"api": _peak_rss_mib(api_pid), "worker": _peak_rss_mib(worker_pid)},
    }


def markdown(results: dict[str, Any]) -> str:
    base = results["baseline"]["images_per_s"]
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']}; "
        f"{m['date']}. Xception at 299×299; the service ran {results['service']['precision']} "
        "(INFERENCE_PRECISION=auto).",
        "",
        "| measure | value | vs baseline |",
        "| --- | --- | --- |",
        f"| baseline: `load_img` + `model.predict`, one image per call | {base:.2f} img/s "
        "| 1.00× |",
    ]
    for row in results["engines"]:
        lines.append(
            f"| engine {row['backend']}, batch {row['batch_size']} | "
            f"{row['images_per_s']:.2f} img/s | {row['images_per_s'] / base:.2f}× |"
        )
    service = results["service"]
    e2e = service["end_to_end"]
    lat = service["latency_ms"]
    lines += [
        f"| end to end, zip of {e2e['images']} (upload to last result) | "
        f"{e2e['images_per_s']:.2f} img/s ({e2e['seconds']:.1f} s) | "
        f"{e2e['images_per_s'] / base:.2f}× |",
        f"| single-image job latency p50 / p95 (idle) | {lat['p50']:.0f} / {lat['p95']:.0f} ms | "
        f"{(1000 / base) / lat['p50']:.2f}× (baseline {1000 / base:.0f} ms per image) |",
        f"| `POST /jobs` accepted while the worker is busy | "
        f"{service['job_creation']['jobs_per_s']:.0f} jobs/s | |",
        "| peak RSS: API / worker with its pool child and the model | "
        f"{service['peak_rss_mib']['api']:.0f} / "
        f"{service['peak_rss_mib']['worker']:.0f} MiB | |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=500, help="images in the end-to-end zip")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results")
    parser.add_argument("--skip-engines", action="store_true")
    parser.add_argument(
        "--skip-sharing", action="store_true", help="leave out bench.sharing (about 3 minutes)"
    )
    args = parser.parse_args()

    os.environ.setdefault("BASE_WEIGHTS", str(BASE_WEIGHTS_FILE))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    weights = os.environ["BASE_WEIGHTS"]
    every = list_labelled_images(TRAIN_DIR)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(every))
    paths = [every[i].path for i in order]
    baseline_paths, engine_paths = paths[:24], paths[24:72]
    latency_paths = paths[72:95]
    e2e_paths = paths[95 : 95 + args.images]
    busy_paths = paths[95 + args.images : 95 + args.images + 400]

    results: dict[str, Any] = {"machine": machine()}
    log("baseline")
    results["baseline"] = bench_baseline(baseline_paths, weights)
    log(f"baseline {results['baseline']['images_per_s']:.2f} img/s")
    results["engines"] = [] if args.skip_engines else bench_engines(engine_paths, weights)
    work = Path(os.environ.get("BENCH_WORKDIR", "/tmp")) / f"intel-bench-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    results["service"] = bench_service(latency_paths, e2e_paths, busy_paths, work)
    results["service"]["precision"] = served_precision()

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.out / "latest.md").write_text(table)
    print(table)
    if not args.skip_sharing:
        log("sharing")
        sharing.run(args.out, per_tenant=600, label="after")
