"""A burst of POST /predict during a backlog leaves everyone else's requests answered.

The API runs on Postgres with no worker, so nothing is classified: every
/predict waits out PREDICT_TIMEOUT_SECONDS. Waiting must hold neither a thread
nor a database connection, or the burst starves /healthz and POST /jobs and
overflows the connection pool into 500s.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from testkit.processes import running_api
from tests.conftest import fresh_postgres_database, image_bytes

JPEG = image_bytes(size=(32, 32), fmt="JPEG", colour=(30, 120, 200))
BURST = 100
# Not a benchmark: a request not answered within this while the burst waits was starved.
PROMPT_SECONDS = 5.0


async def _burst(url: str) -> tuple[list[int], list[int]]:
    limits = httpx.Limits(max_connections=BURST + 10)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one_predict() -> int:
            response = await client.post("/predict", files={"file": ("a.jpg", JPEG)})
            return response.status_code

        async def others() -> list[int]:
            await asyncio.sleep(1.5)  # the burst is waiting by now
            statuses = []
            for _ in range(3):
                health = await client.get("/healthz", timeout=PROMPT_SECONDS)
                job = await client.post(
                    "/jobs", files={"file": ("b.jpg", JPEG)}, timeout=PROMPT_SECONDS
                )
                statuses += [health.status_code, job.status_code]
            return statuses

        predicts = [asyncio.create_task(one_predict()) for _ in range(BURST)]
        other_statuses = await others()
        return list(await asyncio.gather(*predicts)), other_statuses


def test_a_hundred_waiting_predicts_starve_no_one(tmp_path: Path) -> None:
    with (
        fresh_postgres_database() as database_url,
        running_api(
            tmp_path,
            DATABASE_URL=database_url,
            PREDICT_TIMEOUT_SECONDS="8",
            DATABASE_POOL_SIZE="5",
            DATABASE_MAX_OVERFLOW="5",
        ) as service,
    ):
        predict_statuses, other_statuses = asyncio.run(_burst(service.url))
    assert other_statuses == [200, 202] * 3  # each answered within PROMPT_SECONDS
    assert set(predict_statuses) == {504}, sorted(set(predict_statuses))  # never a 500
