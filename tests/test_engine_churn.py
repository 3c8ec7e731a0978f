"""Engine ids without end: Kubernetes gives every rescheduled pod a new one. /status and /metrics
stay bounded by the engines that are live or active lately, and their totals stay exact, with
``BCM_CHURN_ENGINES`` distinct engines through the app in-process (5,000 in ``make test``, 20,000
in ``make soak``).

Before the engines were retired, 20,000 engines made /status 4.6 MB (0.11 s) and /metrics 5.4 MB
(0.45 s), both built on the event loop; now about 45 kB and 50 kB (1 ms and 4 ms). Unretired,
5,000 engines would still put either over 1 MB, four times the limit asserted here. The engines
call through httpx's ASGI transport without a client around it: 20,000 requests through FastAPI
take about 7 s that way, and 12 s through ``httpx.AsyncClient``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
from test_metrics import samples, value

from bcmanager.core.manager import Manager
from bcmanager.core.progress import IDLE_LISTED
from bcmanager.http.metrics import FILE_COUNTERS, RETIRED
from conftest import Run, started

ENGINES = int(os.environ.get("BCM_CHURN_ENGINES") or 5_000)
HOLDERS = 20  # the first engines to get a batch keep it to the end: live jobs
GIVE_BACK = 10  # of those, the first hand theirs back 100 engines before the end
GIVE_BACK_AT = ENGINES - 100
# How the other jobs end, in turn; a batch given back (STOPPED) goes to the next engine.
OUTCOMES = ("DONE", "DONE", "FAILED", "STOPPED", "DONE")
SIZE_LIMIT = 256 * 1024


async def test_engine_ids_without_end_leave_status_and_metrics_small_and_their_totals_exact(
    run: Run,
) -> None:
    run.add_many(60)
    async with started(Manager(run.settings())) as app:
        transport = httpx.ASGITransport(app=app)

        async def get(path: str) -> httpx.Response:
            reply = await transport.handle_async_request(httpx.Request("GET", f"http://bcm{path}"))
            await reply.aread()
            assert reply.status_code == 200, reply.text
            return reply

        async def ask(path: str) -> dict[str, Any]:
            body: dict[str, Any] = json.loads((await get(path)).content)
            return body

        held: list[tuple[str, str]] = []  # (engine, jobid)
        jobs = 0
        for index in range(ENGINES):
            engine = f"pod-{index:05d}"
            if index == GIVE_BACK_AT:
                for _, jobid in held[:GIVE_BACK]:
                    await ask(f"/completed?job_id={jobid}&job_state=STOPPED")
            batch = await ask(f"/assignwork?engineid={engine}&batchsize=1")
            if not batch["batch_size"]:
                continue
            jobs += 1
            if len(held) < HOLDERS:
                held.append((engine, batch["jobid"]))
                continue
            outcome = OUTCOMES[jobs % len(OUTCOMES)]
            if outcome == "DONE":
                run.basecall(batch["job_output_dir"], batch["batch"])
            await ask(f"/completed?job_id={batch['jobid']}&job_state={outcome}")
        assert batch["batch_size"] == 0  # the last engine got the no-work reply
        status_reply, metrics_reply = await get("/status"), await get("/metrics")
    assert len(status_reply.content) < SIZE_LIMIT, f"/status: {len(status_reply.content)} bytes"
    assert len(metrics_reply.content) < SIZE_LIMIT, f"/metrics: {len(metrics_reply.content)} B"

    status = json.loads(status_reply.content)
    listed, retired = status["engines"], status["retired_engines"]
    live = {engine["engine"]: engine["current_jobs"] for engine in listed if engine["current_jobs"]}
    assert live == {engine: [jobid] for engine, jobid in held[GIVE_BACK:]}  # the oldest of all
    idle = {engine["engine"] for engine in listed if not engine["current_jobs"]}
    # Listed: the idle engines active last, those that only got the no-work reply included.
    recent = [f"pod-{index:05d}" for index in range(GIVE_BACK_AT - 18, ENGINES)]
    assert idle == set(recent) | {engine for engine, _ in held[:GIVE_BACK]}
    assert len(idle) == IDLE_LISTED
    assert retired["engines"] == ENGINES - len(listed)

    def total(key: str) -> int:
        return sum(engine[key] for engine in listed) + retired[key]

    files, sizes = status["files"], status["bytes"]
    assert total("files_done") == files["done"] and total("bytes_done") == sizes["done"]
    # files_failed counts failed attempts; files["failed"] the files quarantined after them.
    assert total("files_failed") >= files["failed"] and total("jobs_assigned") == jobs
    assert files["leased"] == HOLDERS - GIVE_BACK and files["pending"] == 0
    assert retired["files_done"] > 0 and total("files_done") > retired["files_done"]

    found = samples(metrics_reply.text)
    for name, _, _ in FILE_COUNTERS:
        engines = {dict(labels)["engine"] for sample, labels in found if sample == f"{name}_total"}
        assert engines == {engine["engine"] for engine in listed} | {RETIRED}
    done = sum(v for (sample, _), v in found.items() if sample == "bcmanager_files_done_total")
    assert done == files["done"]
    failed = sum(v for (sample, _), v in found.items() if sample == "bcmanager_files_failed_total")
    assert failed == total("files_failed")
    assert value(found, "bcmanager_engines", state="busy") == HOLDERS - GIVE_BACK
    assert value(found, "bcmanager_engines", state="idle") == IDLE_LISTED
    assert value(found, "bcmanager_engines_retired_total") == retired["engines"]
