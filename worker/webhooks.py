"""The webhook worker's work: one delivery attempt per message, and the loop that finds due events.

An attempt is two units of work around an HTTP call that holds no transaction:
claim the event (a lease), POST it, record what happened.
"""

from __future__ import annotations

from shared import outbox
from shared.settings import Settings
from shared.unit_of_work import UnitOfWorkFactory
from shared.webhooks.delivery import Outcome, attempt, claim_event, due_events, record_attempt


def deliver(event_id: str, settings: Settings, units: UnitOfWorkFactory) -> Outcome | None:
    """One attempt for a due event; None when it is not due, already done, leased elsewhere,
    or waiting behind an earlier event of its job (which sends it on when it ends)."""
    with units.scope() as unit:
        claimed = claim_event(unit, event_id, settings)
    if claimed is None:
        return None
    done = attempt(claimed, settings)
    with units.scope() as unit:
        record_attempt(unit, claimed, done)
    return done.outcome


def dispatch_due(units: UnitOfWorkFactory) -> int:
    """Enqueue every pending event that is due: retries, and sends whose enqueue was lost."""
    with units.scope(write=False) as unit:
        due = due_events(unit)
        for event_id in due:
            outbox.add_event(unit, event_id)
    return len(due)
