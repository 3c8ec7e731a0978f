"""GET /metrics: the run in Prometheus' text format, from a registry that each app owns.

Counts, per-engine tallies and job durations are read from the manager when Prometheus scrapes,
by a collector: ``progress.py`` stays the one place they are kept, and a scrape costs
O(listed engines), like /status. Only request latency is measured here, by a small ASGI
middleware. Every label takes its values from a bounded set: file states, phases, outcomes, the
app's routes, a few HTTP methods, and the engines that /status lists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from starlette.types import ASGIApp, Receive, Scope, Send

from bcmanager.core.progress import Tallies
from bcmanager.facility.facility import Facility
from bcmanager.http.access import Kind
from bcmanager.http.routing import ERRORS, TOKEN_OPTIONAL, guard
from bcmanager.models import RunEntry, RunPhase

router = APIRouter()

# The engine label of the series that sums the retired engines (see progress.py); it cannot be
# an engine id, which has no parentheses.
RETIRED = "(retired)"
# Methods counted under their own name; any other is counted as "other", whatever a client sends.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Files counters by engine: (metric name without _total, help, the tally it shows).
#
# Each listed engine has its series, and one more, engine="(retired)", holds the sum of the
# retired engines. When an engine is retired its series ends and its count moves into that one
# at once, so the sum over the engine label never drops, but the retired series jumps. For the
# run's totals use `sum without (engine) (bcmanager_files_done_total)`, and for a run-wide rate
# take the rate of that sum (a recording rule, or `rate(sum without (engine) (...)[5m:])`), not
# the sum of per-engine rates, which counts a retired engine's work again when it retires.
# Per-engine rates (`rate(bcmanager_files_done_total{engine!="(retired)"}[5m])`) are exact; an
# engine listed again after it was retired starts from 0, which rate() reads as a counter reset.
FILE_COUNTERS: tuple[tuple[str, str, Callable[[Tallies], int]], ...] = (
    ("bcmanager_files_assigned", "Files leased to the engine.", lambda s: s.files_assigned),
    ("bcmanager_files_done", "Files of the engine's DONE jobs.", lambda s: s.files_done),
    ("bcmanager_files_failed", "Files of the engine's FAILED jobs.", lambda s: s.files_failed),
    (
        "bcmanager_files_released",
        "Files the engine gave back unfinished (STOPPED).",
        lambda s: s.files_released,
    ),
    (
        "bcmanager_files_expired",
        "Files taken back from the engine when its lease ran out.",
        lambda s: s.files_expired,
    ),
)


class RunCollector:
    """Reads the runs' state at scrape time: totals over every run, and a few series per run
    that is not sealed (so the series are bounded by the live runs)."""

    def __init__(self, facility: Facility) -> None:
        self.facility = facility

    def collect(self) -> Iterator[Metric]:
        facility = self.facility
        now = facility.clock()
        counts, sizes = facility.totals()
        files = GaugeMetricFamily("bcmanager_files", "Raw files by state.", labels=["state"])
        for state, count in counts.items():
            files.add_metric([state.value], count)
        yield files
        size = GaugeMetricFamily(
            "bcmanager_raw_bytes", "Bytes of raw files by state.", labels=["state"]
        )
        for state, total in sizes.items():
            size.add_metric([state.value], total)
        yield size
        phase = GaugeMetricFamily(
            "bcmanager_run_phase", "1 for the phase the run is in, else 0.", labels=["phase"]
        )
        current = facility.phase()
        for each in RunPhase:
            phase.add_metric([each.value], 1 if each is current else 0)
        yield phase
        yield from _per_run(facility.entries(live_only=True))
        progress = facility.progress(now)
        engines = progress.engine_stats(now)
        for name, help_text, tally in FILE_COUNTERS:
            counter = CounterMetricFamily(name, help_text, labels=["engine"])
            for stats in engines:
                counter.add_metric([stats.engine], tally(stats.work))
            counter.add_metric([RETIRED], tally(progress.retired))
            yield counter
        listed = GaugeMetricFamily(
            "bcmanager_engines",
            "Engines listed: with a live job (busy) or without (idle).",
            labels=["state"],
        )
        idle = progress.idle_engines()
        listed.add_metric(["busy"], len(engines) - idle)
        listed.add_metric(["idle"], idle)
        yield listed
        yield CounterMetricFamily(
            "bcmanager_engines_retired",
            'Engines no longer listed, their tallies summed under engine="(retired)".',
            value=progress.retired_engines,
        )
        durations = HistogramMetricFamily(
            "bcmanager_job_duration_seconds",
            "Seconds from assignment to the end of a job, by how it ended.",
            labels=["outcome"],
        )
        for outcome, histogram in progress.durations.items():
            durations.add_metric([outcome.value], histogram.cumulative(), histogram.total)
        yield durations


def _per_run(entries: list[RunEntry]) -> Iterator[Metric]:
    files = GaugeMetricFamily(
        "bcmanager_run_files", "A live run's raw files by state.", labels=["run", "state"]
    )
    lag = GaugeMetricFamily(
        "bcmanager_run_lag_seconds",
        "How long a live run's oldest pending file has waited (0 when none is pending).",
        labels=["run"],
    )
    priority = GaugeMetricFamily("bcmanager_run_priority", "A live run's priority.", labels=["run"])
    paused = GaugeMetricFamily("bcmanager_run_paused", "1 while a run is paused.", labels=["run"])
    for entry in entries:
        for state, count in entry.files.model_dump().items():
            files.add_metric([entry.path, state], count)
        lag.add_metric([entry.path], entry.lag_seconds or 0.0)
        priority.add_metric([entry.path], entry.priority)
        paused.add_metric([entry.path], 1 if entry.paused else 0)
    yield from (files, lag, priority, paused)


class Metrics:
    """One app's registry: the run collector, the process' own metrics and request latency."""

    def __init__(self, facility: Facility) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(RunCollector(facility))
        ProcessCollector(registry=self.registry)
        self.requests = Histogram(
            "bcmanager_request_duration_seconds",
            "Seconds to answer an HTTP request, by method and route.",
            ["method", "route"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """ASGI middleware: times each HTTP request under its route's template (``/status``), so
    the label set stays small; a path that matches no route counts as ``unmatched``, and a
    method outside ``METHODS`` as ``other``."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.histogram.labels(method, route).observe(time.perf_counter() - start)


@router.get(
    "/metrics",
    response_class=Response,
    operation_id="metrics",
    summary="Prometheus metrics: files by state, files by engine and outcome, durations",
    tags=["operations"],
    # The exact media type carries prometheus-client's format version; the schema names
    # only its kind, so it does not change with that library.
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        401: ERRORS[401],
    },
    dependencies=guard(Kind.READ),
    openapi_extra=TOKEN_OPTIONAL,
)
async def prometheus_metrics(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
