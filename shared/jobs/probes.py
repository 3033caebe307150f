"""Whether a job has an item of some kind, asked so that no planner can make it costly."""

from __future__ import annotations

from sqlalchemy import ColumnElement, select

from shared.db.models import Item, Job


def job_has_item(*criteria: ColumnElement[bool]) -> ColumnElement[bool]:
    """Whether the job of the enclosing query has an item meeting `criteria`.

    A correlated subquery with LIMIT 1 runs once per job, through the job's index
    (`ix_items_job_id_status_position`: give `Item.status ==` one status). An EXISTS
    may be planned as a join over every item of that status instead, which Postgres
    does while the table has no statistics (a fresh table, a big upload, autovacuum
    off): then each call costs in proportion to the whole queue.
    """
    first = select(Item.id).where(Item.job_id == Job.id, *criteria).limit(1).scalar_subquery()
    return first.is_not(None)
