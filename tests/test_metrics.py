"""GET /metrics in Prometheus' text format, parsed back with prometheus-client's own parser."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bcmanager.core.manager import Manager
from bcmanager.http.app import create_app
from conftest import Run, serving


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample, keyed by name and labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[(name, frozenset(labels.items()))]


async def test_metrics_count_files_by_state_and_engine(run: Run) -> None:
    run.add_many(9)
    async with serving(Manager(run.settings(report_back_period=1))) as client:
        jobs = {}
        for engine, size in (("gpu1", 3), ("gpu2", 2), ("gpu3", 1), ("gpu4", 2)):
            reply = await client.get("/assignwork", params={"engineid": engine, "batchsize": size})
            jobs[engine] = reply.json()["jobid"]
            run.basecall(reply.json()["job_output_dir"], reply.json()["batch"])
        for engine, state in (("gpu1", "DONE"), ("gpu2", "FAILED"), ("gpu3", "STOPPED")):
            params = {"job_id": jobs[engine], "job_state": state}
            assert (await client.get("/completed", params=params)).status_code == 200
        await asyncio.sleep(1.3)  # gpu4 never calls again: its lease runs out
        await client.get("/status")
        await client.get("/no/such/page")
        reply = await client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    found = samples(reply.text)
    files = {state: value(found, "bcmanager_files", state=state) for state in ("pending", "done")}
    # Released, expired, never leased, and the failed attempt's files, retried.
    assert files == {"pending": 1 + 2 + 1 + 2, "done": 3}
    assert value(found, "bcmanager_files", state="failed") == 0
    assert value(found, "bcmanager_raw_bytes", state="done") == sum(
        (run.input_dir / name).stat().st_size for name in sorted(run.reads)[:3]
    )
    assert value(found, "bcmanager_run_phase", phase="sequencing") == 1
    assert value(found, "bcmanager_run_phase", phase="complete") == 0
    assert value(found, "bcmanager_files_assigned_total", engine="gpu1") == 3
    assert value(found, "bcmanager_files_done_total", engine="gpu1") == 3
    assert value(found, "bcmanager_files_failed_total", engine="gpu2") == 2
    assert value(found, "bcmanager_files_released_total", engine="gpu3") == 1
    assert value(found, "bcmanager_files_expired_total", engine="gpu4") == 2
    assert value(found, "bcmanager_files_done_total", engine="gpu4") == 0
    assert value(found, "bcmanager_job_duration_seconds_count", outcome="DONE") == 1
    assert value(found, "bcmanager_job_duration_seconds_bucket", outcome="EXPIRED", le="+Inf") == 1
    assert value(found, "bcmanager_job_duration_seconds_bucket", outcome="EXPIRED", le="30.0") == 1
    requests = "bcmanager_request_duration_seconds_count"
    assert value(found, requests, method="GET", route="/assignwork") == 4
    assert value(found, requests, method="GET", route="/completed") == 3
    assert value(found, requests, method="GET", route="/status") == 1
    assert value(found, requests, method="GET", route="unmatched") == 1
    assert value(found, "process_resident_memory_bytes") > 0


async def test_each_app_owns_its_registry(run: Run) -> None:
    """Two apps in one process (as in these tests) count their own requests, not each other's."""
    counted = []
    for _ in range(2):
        app = create_app(run.settings())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bcm") as client:
            if not counted:
                await client.get("/status")
            counted.append(samples((await client.get("/metrics")).text))
    requests = (
        "bcmanager_request_duration_seconds_count",
        frozenset({("method", "GET"), ("route", "/status")}),
    )
    assert counted[0][requests] == 1
    assert requests not in counted[1]


async def test_a_method_no_route_knows_is_counted_as_other(run: Run) -> None:
    """The method label comes from the client: invented ones must not each add a series."""
    async with serving(Manager(run.settings())) as client:
        for index in range(50):
            reply = await client.request(f"BREW{index}", "/status")
            assert reply.status_code == 405
        found = samples((await client.get("/metrics")).text)
    requests = "bcmanager_request_duration_seconds_count"
    methods = {dict(labels)["method"] for name, labels in found if name == requests}
    assert methods == {"other"}
    assert value(found, requests, method="other", route="/status") == 50
