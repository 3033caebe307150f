"""The job as clients see it: a page of jobs costs one summary query, not one a job."""

from __future__ import annotations

from functools import partial
from typing import Any

from sqlalchemy import select

from shared.db.models import Job
from shared.jobs.documents import job_document, job_documents
from shared.jobs.processing import record_results
from tests.shared.database import add_job, claim, results_for, scope, statements_while


def _finish(n_jobs: int) -> list[str]:
    """`n_jobs` jobs of 3 images, each classified as one forest and two seas."""
    job_ids = [add_job(3) for _ in range(n_jobs)]
    with scope() as session:
        claimed = claim(session, 3 * n_jobs)
    by_job: dict[str, list[Any]] = {}
    for item in claimed:
        by_job.setdefault(item.job_id, []).append(item)
    with scope() as session:
        for items in by_job.values():
            record_results(session, results_for(items[:1], "forest"), worker="w", inference_ms=1)
            record_results(session, results_for(items[1:]), worker="w", inference_ms=1)
    return job_ids


def test_a_page_of_jobs_reads_their_summaries_in_one_query(database: str) -> None:
    few, many = _finish(2), _finish(12)
    with scope(write=False) as session:
        for ids in (few, many):
            jobs = list(session.scalars(select(Job).where(Job.id.in_(ids))))
            documents, statements = statements_while(session, partial(job_documents, session, jobs))
            assert statements == 1  # 2 jobs or 12
            assert [d["summary"] for d in documents] == [{"forest": 1, "sea": 2}] * len(ids)
            # The same as each job's own document.
            assert documents == [job_document(session, job) for job in jobs]


def test_a_page_with_nothing_classified_yet_reads_no_summaries(database: str) -> None:
    job_ids = [add_job(2) for _ in range(3)]
    with scope(write=False) as session:
        jobs = list(session.scalars(select(Job).where(Job.id.in_(job_ids))))
        documents, statements = statements_while(session, lambda: job_documents(session, jobs))
    assert statements == 0
    assert [d["summary"] for d in documents] == [{}, {}, {}]
