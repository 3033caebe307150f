"""Capacity: how many workers a load needs, by a small discrete-event simulation.

    python -m bench.capacity [--per-worker 30] [--batch 8] [--out bench/results]

The model is the service's own queue, simplified:

- **Arrivals.** Jobs arrive as a Poisson stream at a given total image rate. The
  tenant mix sets job sizes: single images (`/predict`, the lane), zips of 100,
  and zips of 1,000.
- **Lane first.** A free worker takes up to `batch` waiting single images first,
  else up to `batch` images of the zips in arrival order.
- **Service time.** A batch of `n` images keeps its worker busy for
  `n / per_worker` seconds.
- **What it leaves out.** Fair share between tenants changes who waits, not how
  much work there is, so it is left out; so are claims and decoding.

For 1, 10 and 100 workers it reports the utilisation, the p50/p95 wait of a single
image (arrival to the start of its batch) and the p95 time a zip of 100 takes,
and the fewest workers that keep utilisation at or under 0.85 and a zip of 100
done within 30 s (p95) at each rate. Single images go first, so they wait little
at any load below capacity: zips are what more workers buy time for.

The per-worker rate is measured, not assumed (docs/capacity.md):
- one worker on this 2-core machine classifies 31 to 34 img/s end to end;
- a second worker on the same two cores adds nothing, because the cores are the
  limit. Workers on hosts of their own add up.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import log

# Share of jobs by size: mostly single images, some zips (the tenant mix).
DEFAULT_MIX = {1: 0.90, 100: 0.095, 1000: 0.005}


@dataclass(frozen=True)
class Outcome:
    workers: int
    images_per_s: float
    utilisation: float
    single_wait_p50_s: float
    single_wait_p95_s: float
    zip100_p95_s: float | None


def simulate(
    workers: int,
    images_per_s: float,
    *,
    per_worker: float,
    batch: int = 8,
    mix: dict[int, float] | None = None,
    seconds: float = 600.0,
    seed: int = 1,
) -> Outcome:
    """Run the queue for `seconds` of simulated time at `images_per_s` offered load."""
    mix = mix or DEFAULT_MIX
    rng = random.Random(seed)
    sizes, weights = list(mix), list(mix.values())
    mean_size = sum(s * w for s, w in zip(sizes, weights, strict=True))
    jobs_per_s = images_per_s / mean_size
    events: list[tuple[float, int, str, Any]] = []  # (time, order, kind, payload)
    order = 0

    def push(at: float, kind: str, payload: Any) -> None:
        nonlocal order
        heapq.heappush(events, (at, order, kind, payload))
        order += 1

    push(rng.expovariate(jobs_per_s), "arrive", None)
    lane: deque[float] = deque()  # arrival times of waiting single images
    zips: deque[list[Any]] = deque()  # [arrival, size, left to start, left to finish]
    idle, busy_time = workers, 0.0
    single_waits: list[float] = []
    zip100_times: list[float] = []
    now = 0.0

    def dispatch() -> None:
        nonlocal idle, busy_time
        while idle and (lane or zips):
            taken: list[tuple[str, Any]] = []
            while lane and len(taken) < batch:
                arrived = lane.popleft()
                single_waits.append(now - arrived)
                taken.append(("single", None))
            while zips and len(taken) < batch:
                job = zips[0]
                n = min(batch - len(taken), job[2])
                job[2] -= n
                taken += [("zip", job)] * n
                if job[2] == 0:
                    zips.popleft()
            service = len(taken) / per_worker
            busy_time += service
            idle -= 1
            push(now + service, "done", taken)

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if now > seconds:
            break
        if kind == "arrive":
            size = rng.choices(sizes, weights)[0]
            if size == 1:
                lane.append(now)
            else:
                zips.append([now, size, size, size])
            push(now + rng.expovariate(jobs_per_s), "arrive", None)
        else:
            idle += 1
            for what, job in payload:
                if what == "zip":
                    job[3] -= 1
                    if job[3] == 0 and job[1] == 100:
                        zip100_times.append(now - job[0])
        dispatch()
    waits = sorted(single_waits) or [0.0]
    return Outcome(
        workers=workers,
        images_per_s=images_per_s,
        utilisation=round(min(busy_time / (workers * seconds), 1.0), 3),
        single_wait_p50_s=round(statistics.median(waits), 3),
        single_wait_p95_s=round(waits[int(0.95 * (len(waits) - 1))], 3),
        zip100_p95_s=round(sorted(zip100_times)[int(0.95 * (len(zip100_times) - 1))], 2)
        if zip100_times
        else None,
    )


def workers_needed(
    images_per_s: float,
    *,
    per_worker: float,
    batch: int = 8,
    zip100_p95_s: float = 30.0,
    max_utilisation: float = 0.85,
    seconds: float = 3600.0,
) -> int:
    """The fewest workers that keep a zip of 100's p95 under `zip100_p95_s` at no more than
    `max_utilisation` (single images go first, so they wait little at any load below 1)."""
    workers = max(1, int(images_per_s / per_worker))
    while True:
        outcome = simulate(
            workers, images_per_s, per_worker=per_worker, batch=batch, seconds=seconds
        )
        zip_time = outcome.zip100_p95_s if outcome.zip100_p95_s is not None else 0.0
        if outcome.utilisation <= max_utilisation and zip_time <= zip100_p95_s:
            return workers
        workers += 1


def measure_workers(images: int = 400) -> dict[str, float]:
    """A zip's throughput on this machine with one classify worker, then with two.

    Redis + Postgres, keys off, as in production on one host; each zip's photos are
    new to the service, so no known result shortens the run.
    """
    import tempfile
    import time

    import httpx
    import numpy as np
    import redis

    from shared.db.models import JobStatus
    from shared.training.dataset import list_labelled_images
    from testkit.crafted import zip_of
    from testkit.processes import Service, free_port, service_env, wait_for
    from testkit.resources import TRAIN_DIR, fresh_postgres_database

    paths = [image.path for image in list_labelled_images(TRAIN_DIR)]
    np.random.default_rng(5).shuffle(paths)
    redis_url = "redis://127.0.0.1:6379/14"
    redis.Redis.from_url(redis_url).flushdb()
    rates: dict[str, float] = {}
    with fresh_postgres_database() as database_url:
        work = Path(tempfile.mkdtemp())
        env = service_env(work, DATABASE_URL=database_url, REDIS_URL=redis_url)
        env.pop("INFERENCE_BATCH_SIZE", None)
        service = Service(env, work, free_port())
        service.migrate()
        try:
            service.start_api()
            with httpx.Client(base_url=service.url, timeout=120) as client:
                for workers in (1, 2):
                    while len([p for p in service.processes if p.name == "worker"]) < workers:
                        service.start_worker()
                    batch = paths[(workers - 1) * images : workers * images]
                    started = time.perf_counter()
                    response = client.post("/jobs", files={"file": ("photos.zip", zip_of(batch))})
                    job = f"/jobs/{response.json()['id']}"

                    def ended(job: str = job) -> bool:
                        return JobStatus(client.get(job).json()["status"]).is_final

                    wait_for(ended, 600, "the zip", 0.2)
                    rates[f"{workers}_workers_images_per_s"] = round(
                        images / (time.perf_counter() - started), 2
                    )
                    log(f"{workers} worker(s): {rates[f'{workers}_workers_images_per_s']} img/s")
        finally:
            service.stop()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-worker", type=float, default=30.0, help="img/s of one worker")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--measure", action="store_true", help="also measure 1 and 2 workers here")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    measured = measure_workers() if args.measure else {}
    rows = []
    for workers in (1, 10, 100):
        for load in (0.5, 0.8, 0.95):
            outcome = simulate(
                workers,
                load * workers * args.per_worker,
                per_worker=args.per_worker,
                batch=args.batch,
            )
            rows.append(vars(outcome) | {"offered_share_of_capacity": load})
            log(json.dumps(rows[-1]))
    needed = {
        rate: workers_needed(rate, per_worker=args.per_worker, batch=args.batch)
        for rate in (10, 100, 1000, 3000)
    }
    log(f"workers needed (utilisation <= 0.85, a zip of 100 done within 30 s p95): {needed}")
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "per_worker_images_per_s": args.per_worker,
        "batch": args.batch,
        "mix": DEFAULT_MIX,
        "runs": rows,
        "workers_needed": needed,
        "measured_here": measured,
    }
    out = args.out / "capacity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
