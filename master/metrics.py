"""The master's metrics: what it applied (counters and hop histograms, observed where the
change is applied, from values the statements return anyway), and gauges read at scrape
time from what the database keeps counted."""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from strata.common import metrics
from strata.common.events import Report
from strata.common.timeutil import rfc3339, utcnow
from strata.master.db import Applied, Claimed

RESCUE_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# The dashboard's recent figures: minutes kept, and due-to-started samples per minute (a
# uniform sample of the minute's starts beyond that).
RECENT_MINUTES = 5
SAMPLES_PER_MINUTE = 2000


def _seconds(later: datetime, earlier: datetime) -> float:
    """Clocks of different hosts: a small negative difference is a zero."""
    return max(0.0, (later - earlier).total_seconds())


@dataclass
class _Minute:
    start: float  # unix seconds, on the minute
    started: int = 0
    finished: int = 0
    failed: int = 0
    samples: list[float] = field(default_factory=list)

    def sample(self, value: float) -> None:
        self.started += 1
        if len(self.samples) < SAMPLES_PER_MINUTE:
            self.samples.append(value)
        else:  # reservoir: every start of the minute equally likely to be kept
            slot = random.randrange(self.started)
            if slot < SAMPLES_PER_MINUTE:
                self.samples[slot] = value


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Recent:
    """Throughput and due-to-started over the last minutes, of what this master applied."""

    def __init__(self, minutes: int = RECENT_MINUTES, clock: Any = time.time) -> None:
        self._minutes: deque[_Minute] = deque(maxlen=minutes)
        self._clock = clock
        self._since = clock()

    def _now_minute(self) -> _Minute:
        start = self._clock() // 60 * 60
        if not self._minutes or self._minutes[-1].start < start:
            self._minutes.append(_Minute(start))
        return self._minutes[-1]

    def started(self, due_to_started: list[float]) -> None:
        minute = self._now_minute()
        for value in due_to_started:
            minute.sample(value)

    def finished(self, succeeded: int, failed: int) -> None:
        minute = self._now_minute()
        minute.finished += succeeded + failed
        minute.failed += failed

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        window = (self._minutes.maxlen or 1) * 60.0
        kept = [m for m in self._minutes if m.start > now - window]
        span = max(1.0, min(window, now - self._since))
        samples = sorted(v for m in kept for v in m.samples)
        series = []
        for m in kept:
            ordered = sorted(m.samples)
            series.append({
                "at": rfc3339(datetime.fromtimestamp(m.start, UTC)),
                "started": m.started, "finished": m.finished, "failed": m.failed,
                "p50_s": _quantile(ordered, 0.5), "p99_s": _quantile(ordered, 0.99),
            })
        return {
            "window_s": window,
            "started_per_s": sum(m.started for m in kept) / span,
            "finished_per_s": sum(m.finished for m in kept) / span,
            "due_to_started_p50_s": _quantile(samples, 0.5),
            "due_to_started_p99_s": _quantile(samples, 0.99),
            "series": series,
        }


class MasterMetrics:
    def __init__(self) -> None:
        self.registry = r = metrics.registry()
        self.created = Counter("strata_tasks_created", "Tasks created (accepted with a 2xx)",
                               registry=r)
        self.finished = Counter(
            "strata_tasks_finished",
            "Tasks that reached a final state, as applied by this master", ["state"],
            registry=r)
        self.tasks = Gauge("strata_tasks", "Tasks by state, in the whole cluster", ["state"],
                           registry=r)
        self.reclaimed = Counter(
            "strata_attempts_reclaimed",
            "Attempts taken back and put back to pending, by why: region_down (its region "
            "died), not_held (its region no longer held it), worker_dead (its worker died; "
            "run again in the region), returned (handed back or undeliverable)",
            ["reason"], registry=r)
        self.stale = Counter(
            "strata_stale_results",
            "Results that came for an attempt no longer the task's own: dropped", registry=r)
        self.region_up = Gauge("strata_region_up", "1 if the region is live, else 0",
                               ["region"], registry=r)
        self.region_capacity = Gauge("strata_region_capacity",
                                     "Slots of the region's live workers", ["region"],
                                     registry=r)
        self.region_queued = Gauge("strata_region_queued",
                                   "Tasks queued in the region, waiting for a worker",
                                   ["region"], registry=r)
        self.region_running = Gauge("strata_region_running",
                                    "Tasks running on the region's workers", ["region"],
                                    registry=r)
        self.breaker_open = metrics.breaker_gauge(r)
        self.hop = metrics.Histograms(
            "strata_task_hop_seconds",
            "Time a task spends in each hop: due_to_claimed (due until the master claimed "
            "it), claimed_to_started (claimed until its worker started it), "
            "started_to_finished (its run), finished_to_recorded (its end until the master "
            "stored it)",
            ["hop", "region"], buckets=metrics.HOP_BUCKETS, registry=r)
        self._rescue = metrics.Histograms(
            "strata_task_rescue_seconds",
            "From the death of a task's region (its last heartbeat) or worker (found dead "
            "by its region) to the task running again elsewhere", [],
            buckets=RESCUE_BUCKETS, registry=r)
        self.rescue = self._rescue.labels()
        self.schedule_fires = Counter(
            "strata_schedule_fires",
            "Fire times of each schedule accounted for by this master, by outcome: fired, "
            "skipped_overlap, missed", ["schedule", "outcome"], registry=r)
        self.schedule_lag = metrics.Histograms(
            "strata_schedule_lag_seconds",
            "From a schedule's fire time to its task's start", ["schedule"],
            buckets=metrics.HOP_BUCKETS, registry=r)
        self.removed = Counter("strata_tasks_removed",
                               "Finished tasks removed by retention", registry=r)
        self.event_subscribers = Gauge("strata_event_subscribers",
                                       "Clients of this master's /v1/events", registry=r)
        self.recent = Recent()

    def claimed(self, region: str, claims: Sequence[Claimed]) -> None:
        if not claims:
            return
        now = utcnow()
        hop = self.hop.labels("due_to_claimed", region)
        for c in claims:
            hop.observe(_seconds(now, c.run_at))

    def applied(self, reports: Sequence[Report], applied: Applied) -> None:
        """What one transaction applied, of these reports."""
        if applied.to_started:
            # Clocks of different hosts: a small negative difference is a zero.
            hops: dict[str, Any] = {}
            for value, region in zip(applied.to_started, applied.hop_regions, strict=True):
                if value is not None:
                    if region not in hops:
                        hops[region] = self.hop.labels("claimed_to_started", region)
                    hops[region].observe(max(0.0, value))
            self.recent.started([max(0.0, v) for v in applied.due_to_started])
            for value in applied.rescued:
                self.rescue.observe(max(0.0, value))
            for name, lag in zip(applied.schedules, applied.schedule_lags, strict=True):
                self.schedule_lag.labels(name).observe(max(0.0, lag))
        now = utcnow()
        for report in reports:
            if not report.finished:
                continue
            run = self.hop.labels("started_to_finished", report.region)
            recorded = self.hop.labels("finished_to_recorded", report.region)
            for f in report.finished:
                if f.started_at is not None:
                    run.observe(_seconds(f.finished_at, f.started_at))
                recorded.observe(_seconds(now, f.finished_at))
        succeeded = applied.finished.get("succeeded", 0)
        failed = applied.finished.get("failed", 0)
        if succeeded:
            self.finished.labels("succeeded").inc(succeeded)
        if failed:
            self.finished.labels("failed").inc(failed)
        if succeeded or failed:
            self.recent.finished(succeeded, failed)
        if applied.stale:
            self.stale.inc(len(applied.stale))
        if applied.evicted:
            self.reclaimed.labels("worker_dead").inc(applied.evicted)
        if applied.returned:
            self.reclaimed.labels("returned").inc(applied.returned)
