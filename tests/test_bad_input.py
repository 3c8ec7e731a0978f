"""A bad request gets a 4xx JSON error and changes nothing (docs/design.md, invariant 7)."""

from __future__ import annotations

from typing import Any

import pytest

from bcmanager.core.manager import Manager
from conftest import Run, serving, tree

BAD_REQUESTS = [
    ("/assignwork", {"engineid": "gpu1"}),  # batchsize missing
    ("/assignwork", {"engineid": "gpu1", "batchsize": "ten"}),
    ("/assignwork", {"engineid": "gpu1", "batchsize": "2.5"}),
    ("/assignwork", {"engineid": "gpu1", "batchsize": "2.0"}),  # an integer has no decimals
    ("/assignwork", {"engineid": "gpu1", "batchsize": "+0.0"}),
    ("/assignwork", {"batchsize": "2"}),  # engineid missing
    ("/assignwork", {"engineid": "a/b", "batchsize": "2"}),
    ("/assignwork", {"engineid": "..", "batchsize": "2"}),
    ("/assignwork", {"engineid": "../../etc", "batchsize": "2"}),
    ("/assignwork", {"engineid": "gpu 1", "batchsize": "2"}),
    ("/assignwork", {"engineid": "g" * 200, "batchsize": "2"}),
    ("/assignwork", {"engineid": "", "batchsize": "2"}),
    ("/assignwork", {"engineid": "gpu1\n", "batchsize": "2"}),
    ("/keepalive", {"job_id": "12abc", "job_state": "PROCESSING"}),
    ("/keepalive", {"job_id": "-1", "job_state": "PROCESSING"}),
    ("/keepalive", {"job_id": "{jobid}", "job_state": "RUNNING"}),
    ("/keepalive", {"job_id": "{jobid}"}),
    ("/completed", {"job_id": "../1", "job_state": "DONE"}),
    ("/completed", {"job_id": "1" * 60, "job_state": "DONE"}),
    ("/completed", {"job_id": "123456789", "job_state": "DONE"}),  # unknown job
    ("/completed", {"job_id": "{jobid}", "job_state": "PROCESSING"}),
    ("/completed", {"job_id": "{jobid}", "job_state": "EXPIRED"}),
    ("/completed", {"job_id": "{jobid}", "job_state": "done"}),
    ("/completed", {"job_id": "{jobid}"}),
    ("/completed", {"job_state": "DONE"}),
]


# What /status reports that only the clock changes.
CLOCK_KEYS = {"seconds_left", "seconds_since_contact", "seconds_ago"}


def run_state(status: dict[str, Any]) -> dict[str, Any]:
    """The parts of /status that a request could change: files, bytes, jobs and engines."""
    kept = {key: status[key] for key in ("phase", "files", "bytes")}
    for key in ("jobs", "engines", "recent_problems"):
        kept[key] = [
            {name: value for name, value in item.items() if name not in CLOCK_KEYS}
            for item in status[key]
        ]
    return kept


@pytest.mark.parametrize(("route", "params"), BAD_REQUESTS)
async def test_bad_request_is_4xx_json_and_changes_nothing(
    run: Run, route: str, params: dict[str, str]
) -> None:
    run.add_many(4)
    async with serving(Manager(run.settings())) as client:
        leased = await client.get("/assignwork", params={"engineid": "gpu1", "batchsize": 2})
        jobid = leased.json()["jobid"]
        status = (await client.get("/status")).json()
        before = tree(run.input_dir), tree(run.output_dir), run_state(status)
        filled = {key: value.replace("{jobid}", jobid) for key, value in params.items()}
        reply = await client.get(route, params=filled)
        status = (await client.get("/status")).json()
        after = tree(run.input_dir), tree(run.output_dir), run_state(status)
    assert 400 <= reply.status_code < 500, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert "detail" in reply.json()
    assert after == before
