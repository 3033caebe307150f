"""GET /metrics: Prometheus text, read from the database so every process reports the same."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime

from fastapi import APIRouter, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

from api.deps import SettingsDep, UnitsDep
from shared import heartbeats, metrics
from shared.db.models import Item, ItemStatus, Job, JobStatus, MetricCounter, utcnow
from shared.unit_of_work import UnitOfWorkFactory

router = APIRouter(tags=["health"])

COUNTERS = (metrics.JOBS_FINISHED, metrics.ITEMS_FINISHED, metrics.WEBHOOK_ATTEMPTS)
COUNTER_LABEL = {
    metrics.JOBS_FINISHED: "status",
    metrics.ITEMS_FINISHED: "status",
    metrics.WEBHOOK_ATTEMPTS: "outcome",
}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
)
def prometheus_metrics(settings: SettingsDep, units: UnitsDep) -> Response:
    """Jobs and items by final status, queue depth and age, batch and latency histograms."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(units, settings.worker_stale_seconds))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class DatabaseCollector:
    def __init__(self, units: UnitOfWorkFactory, stale_seconds: float) -> None:
        self.units = units
        self.stale_seconds = stale_seconds

    def collect(self) -> Iterator[Metric]:
        with self.units.scope(write=False) as session:
            rows = session.execute(
                select(MetricCounter.name, MetricCounter.labels, MetricCounter.value)
            ).all()
            job_counts = dict(
                session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            )
            item_counts = dict(
                session.execute(
                    select(Item.status, func.count())
                    .where(Item.status.in_([ItemStatus.QUEUED, ItemStatus.RUNNING]))
                    .group_by(Item.status)
                ).all()
            )
            oldest: datetime | None = session.scalar(
                select(func.min(Item.created_at)).where(Item.status == ItemStatus.QUEUED)
            )
            workers = heartbeats.alive_counts(session, self.stale_seconds)
        stored = {(name, labels): value for name, labels, value in rows}
        yield from _counters(stored)
        yield from _histograms(stored)
        jobs = GaugeMetricFamily("intel_jobs", "Jobs held now, by status", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], float(job_counts.get(status.value, 0)))
        yield jobs
        yield GaugeMetricFamily(
            "intel_queue_depth",
            "Items waiting for a worker",
            value=float(item_counts.get(ItemStatus.QUEUED, 0)),
        )
        yield GaugeMetricFamily(
            "intel_items_running",
            "Items a worker holds now",
            value=float(item_counts.get(ItemStatus.RUNNING, 0)),
        )
        alive = GaugeMetricFamily(
            "intel_workers_alive",
            "Workers whose heartbeat is fresher than WORKER_STALE_SECONDS, by role",
            labels=["role"],
        )
        for role, count in workers.items():
            alive.add_metric([role], float(count))
        yield alive
        # UTCDateTime makes the MIN() aware on SQLite too.
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "intel_oldest_queued_item_age_seconds",
            "How long the oldest waiting item has waited (0 when none waits)",
            value=max(age, 0.0),
        )


def _counters(stored: dict[tuple[str, str], float]) -> Iterator[Metric]:
    for name in COUNTERS:
        label = COUNTER_LABEL[name]
        family = CounterMetricFamily(name, metrics.DESCRIPTIONS[name], labels=[label])
        for (stored_name, labels), value in sorted(stored.items()):
            if stored_name == name:
                family.add_metric([json.loads(labels).get(label, "")], value)
        yield family


def _histograms(stored: dict[tuple[str, str], float]) -> Iterator[Metric]:
    for name, bounds in metrics.HISTOGRAM_BUCKETS.items():
        buckets: dict[str, float] = defaultdict(float)
        for (stored_name, labels), value in stored.items():
            if stored_name == f"{name}_bucket":
                buckets[json.loads(labels)["le"]] = value
        edges = [f"{bound:g}" for bound in bounds] + ["+Inf"]
        family = HistogramMetricFamily(name, metrics.DESCRIPTIONS[name])
        family.add_metric(
            [],
            buckets=[(edge, buckets[edge]) for edge in edges],
            sum_value=stored.get((f"{name}_sum", "{}"), 0.0),
        )
        yield family
