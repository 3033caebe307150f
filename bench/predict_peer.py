"""`POST /predict` against the peer a user would pick instead: BentoML's adaptive batching.

    python -m bench.predict_peer --bentoml /path/to/venv/bin/bentoml [--images 600]
    python -m bench.predict_peer --idle-only [--runs 3]   # ours alone, idle, no peer

The peer (../shared/peers/bentoml_service.py) serves the same shipped INT8 IR with
the project's preprocessing, behind BentoML's adaptive batching (max batch 16);
it runs from its own virtual environment (`pip install bentoml==1.4.40 openvino
pillow numpy`). In one run, one after the other on this machine:

1. idle: one image at a time (after a warm-up), p50 and p95, for the peer, for
   our service on embedded defaults (`serve`), and on Redis + Postgres;
2. under load: N photos from 16 concurrent clients, one image per request:
   throughput and p95, for the peer and for our service on Redis + Postgres
   (API and worker processes, the worker niced as `serve` runs it). Both stay
   up and take turns, ROUNDS rounds of N / ROUNDS photos each, so a slow spell
   of a shared machine falls on both rather than on whichever ran second; the
   ratios are the medians of the rounds' ratios.

Every phase sends photos no earlier phase sent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from bench.report import log, percentiles
from shared.settings import DEFAULT_MODEL_PATH
from shared.training.dataset import list_labelled_images
from testkit.processes import Service, free_port, running_serve, service_env, wait_for
from testkit.resources import SHARED_DIR, TRAIN_DIR, fresh_postgres_database

CLIENTS = 16
IDLE_CALLS = 25
ROUNDS = 3
REDIS_URL = "redis://127.0.0.1:6379/11"
Post = Callable[[httpx.Client, bytes], None]


def ours(client: httpx.Client, image: bytes) -> None:
    response = client.post("/predict", files={"file": ("photo.jpg", image)})
    assert response.status_code == 200, response.text


def peer(client: httpx.Client, image: bytes) -> None:
    response = client.post("/classify", files={"images": ("photo.jpg", image, "image/jpeg")})
    assert response.status_code == 200, response.text


def idle(url: str, post: Post, images: list[bytes]) -> dict[str, float]:
    with httpx.Client(base_url=url, timeout=60) as client:
        for image in images[:5]:  # warm-up: first inference, connections
            post(client, image)
        times = []
        for image in images[5:]:
            started = time.perf_counter()
            post(client, image)
            times.append((time.perf_counter() - started) * 1000)
    return percentiles(times)


def loaded(url: str, post: Post, images: list[bytes]) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    with httpx.Client(base_url=url, timeout=120, limits=limits) as client:
        post(client, images[0])

        def timed(image: bytes) -> float:
            started = time.perf_counter()
            post(client, image)
            return (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            times = list(pool.map(timed, images[1:]))
        seconds = time.perf_counter() - started
    return {"images_per_s": round(len(times) / seconds, 2), "latency_ms": percentiles(times)}


@contextmanager
def running_peer(bentoml: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PEER_MODEL_DIR": str(DEFAULT_MODEL_PATH)}
    log_file = Path(tempfile.mkdtemp()) / "peer.log"
    with log_file.open("wb") as out:
        process = subprocess.Popen(
            [str(bentoml), "serve", "bentoml_service:PeerClassifier", "--port", str(port)],
            cwd=SHARED_DIR / "peers",
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:

            def ready() -> bool:
                assert process.poll() is None, log_file.read_text()
                try:
                    return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(ready, 180, "the BentoML peer")
            yield url
        finally:
            os.killpg(process.pid, 15)
            process.wait(30)


@contextmanager
def running_cluster_path(work: Path) -> Iterator[str]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    with fresh_postgres_database() as database_url:
        env = service_env(work, DATABASE_URL=database_url, REDIS_URL=REDIS_URL, WORKER_NICE="10")
        env.pop("INFERENCE_BATCH_SIZE", None)
        service = Service(env, work, free_port())
        service.migrate()
        try:
            service.start_api()
            service.start_worker()
            yield service.url
        finally:
            service.stop()


def _median_ratio(rounds: list[dict[str, Any]], measure: Callable[[Any], float]) -> float:
    return round(float(np.median([measure(r["ours"]) / measure(r["peer"]) for r in rounds])), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bentoml", type=Path, help="the peer venv's bentoml")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--idle-only",
        action="store_true",
        help="only our idle /predict on `serve`, --runs times (no peer, nothing written)",
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    paths = [image.path for image in list_labelled_images(TRAIN_DIR)]
    np.random.default_rng(11).shuffle(paths)
    chunks = iter(range(0, len(paths), args.images))

    def fresh(n: int) -> list[bytes]:
        start = next(chunks)
        return [path.read_bytes() for path in paths[start : start + n]]

    if args.idle_only:
        with running_serve(Path(tempfile.mkdtemp())) as embedded:
            for _ in range(args.runs):
                log(f"ours idle on serve: {idle(embedded.url, ours, fresh(IDLE_CALLS))}")
        return
    if args.bentoml is None:
        parser.error("--bentoml is required (or --idle-only)")
    result: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    with running_serve(Path(tempfile.mkdtemp())) as embedded:
        result["ours_idle_embedded_ms"] = idle(embedded.url, ours, fresh(IDLE_CALLS))
    per_round = args.images // ROUNDS
    with (
        running_peer(args.bentoml) as peer_url,
        running_cluster_path(Path(tempfile.mkdtemp())) as url,
    ):
        result["peer_idle_ms"] = idle(peer_url, peer, fresh(IDLE_CALLS))
        result["ours_idle_cluster_ms"] = idle(url, ours, fresh(IDLE_CALLS))
        rounds = []
        for number in range(ROUNDS):
            images = fresh(per_round)  # both sides get the same photos in a round
            sides = [("peer", peer_url, peer), ("ours", url, ours)]
            if number % 2:
                sides.reverse()  # and go first in turn
            rounds.append({side: loaded(address, post, images) for side, address, post in sides})
            log(f"round {number + 1}: {rounds[-1]}")
    result["rounds"] = rounds
    result["throughput_ours_over_peer"] = _median_ratio(rounds, lambda r: r["images_per_s"])
    result["p95_ours_over_peer"] = _median_ratio(rounds, lambda r: r["latency_ms"]["p95"])
    out = args.out / "predict_peer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(json.dumps(result))


if __name__ == "__main__":
    main()
