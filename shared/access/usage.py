"""Images classified, failed and reused per day for each API key: `GET /usage`.

Usage is counted like the /metrics counters (`shared.metrics`): gathered on the
unit of work that finishes the items and written with its commit, so a
rolled-back batch counts nothing and retention, which deletes jobs, never takes
usage away. The rows live among the counters under their own name, labelled by
key, day (UTC) and outcome; /metrics does not export them.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import metrics
from shared.db.models import Job, MetricCounter, utcnow

USAGE = "intel_usage"
CLASSIFIED, FAILED, REUSED = "classified", "failed", "reused"
ANONYMOUS = ""  # callers of a server without keys count together


def count_usage(unit: metrics.Counting, owner: str | None, outcome: str, number: int) -> None:
    """`number` more items of `owner`'s ended today with `outcome` (REUSED: also CLASSIFIED)."""
    day = utcnow().date().isoformat()
    metrics.count(unit, USAGE, number, day=day, key=owner or ANONYMOUS, outcome=outcome)


class CountingSession(metrics.Counting, Protocol):
    def execute(self, statement: Any) -> Any: ...


def count_for_jobs(unit: CountingSession, ended: Counter[tuple[str, str]]) -> None:
    """`ended[(job_id, outcome)]` items ended: counted for each job's key, looked up once."""
    job_ids = {job_id for job_id, _ in ended}
    if not job_ids:
        return
    owners = dict(unit.execute(select(Job.id, Job.owner_id).where(Job.id.in_(job_ids))).all())
    for (job_id, outcome), number in ended.items():
        count_usage(unit, owners.get(job_id), outcome, number)


@dataclass
class DayUsage:
    day: date
    classified: int = 0
    failed: int = 0
    reused: int = 0


def usage_by_day(session: Session, owner: str | None, first: date, last: date) -> list[DayUsage]:
    """`owner`'s usage on each day from `first` to `last` (inclusive) that has any."""
    mark = metrics.labels_key({"key": owner or ANONYMOUS})[1:-1]  # "key":"…", as stored
    return _by_key(session, first, last, mark).get(owner or ANONYMOUS, [])


def usage_of_every_key(session: Session, first: date, last: date) -> dict[str, list[DayUsage]]:
    """Each key's usage by day (ANONYMOUS: callers of a server without keys), for admins."""
    return _by_key(session, first, last, None)


def _by_key(
    session: Session, first: date, last: date, mark: str | None
) -> dict[str, list[DayUsage]]:
    query = select(MetricCounter.labels, MetricCounter.value).where(MetricCounter.name == USAGE)
    if mark is not None:
        query = query.where(MetricCounter.labels.contains(mark, autoescape=True))
    keys: dict[str, dict[date, DayUsage]] = {}
    for labels, value in session.execute(query).all():
        parsed = json.loads(labels)
        day = date.fromisoformat(parsed["day"])
        if not first <= day <= last:
            continue
        usage = keys.setdefault(parsed["key"], {}).setdefault(day, DayUsage(day))
        setattr(usage, parsed["outcome"], getattr(usage, parsed["outcome"]) + int(value))
    return {key: [days[day] for day in sorted(days)] for key, days in sorted(keys.items())}
