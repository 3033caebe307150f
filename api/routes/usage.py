"""/usage: images classified, failed and reused per day, for the caller's key."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import CallerDep
from api.deps import SessionDep
from api.errors import ERROR_RESPONSES
from api.schemas import DayUsageOut, UsageOut
from shared.access.usage import usage_by_day
from shared.db.models import utcnow
from shared.errors import InvalidInput

router = APIRouter(prefix="/usage", tags=["usage"], responses=ERROR_RESPONSES)

DEFAULT_DAYS = 30
MAX_DAYS = 366


@router.get("", response_model=UsageOut)
def usage(
    session: SessionDep,
    caller: CallerDep,
    first: Annotated[
        date | None, Query(alias="from", description="First day (UTC), default 30 days ago")
    ] = None,
    last: Annotated[
        date | None, Query(alias="to", description="Last day (UTC), default today")
    ] = None,
) -> UsageOut:
    """Per day (UTC) with any use: images classified (reused ones included), failed, and
    reused (a stored result of an identical image); the totals over the range."""
    last = last or utcnow().date()
    first = first or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise InvalidInput(f"from ({first}) is after to ({last})")
    if (last - first).days >= MAX_DAYS:
        raise InvalidInput(f"a usage range is at most {MAX_DAYS} days")
    days = [
        DayUsageOut.model_validate(d, from_attributes=True)
        for d in usage_by_day(session, caller.owner, first, last)
    ]
    return UsageOut(
        key=caller.key_id,
        first_day=first,
        last_day=last,
        days=days,
        total=DayUsageOut(
            day=None,
            classified=sum(d.classified for d in days),
            failed=sum(d.failed for d in days),
            reused=sum(d.reused for d in days),
        ),
    )
