"""An engine that speaks only docs/protocol.md, as the original BCProcessor does: plain GET requests
with the original parameter names, reading only the original keys, against a real server."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from bcmanager.simulate import basecall
from conftest import Run, Server

ORIGINAL_BATCH_KEYS = {
    "report_back_period",
    "report_back_interval",
    "jobid",
    "job_input_dir",
    "job_output_dir",
    "bc_engine_id",
    "batch_size",
    "batch",
}


def test_original_client_drives_one_job_to_done_and_one_to_failed(
    run: Run, start_server: Callable[..., Server]
) -> None:
    names = run.add_many(4)
    server = start_server()
    base = server.url
    with httpx.Client(timeout=10) as http:
        first = http.get(f"{base}/assignwork?engineid=gpu004&batchsize=2").json()
        second = http.get(f"{base}/assignwork?engineid=gpu005&batchsize=2").json()
        assert set(first) >= ORIGINAL_BATCH_KEYS
        assert isinstance(first["report_back_interval"], int)
        assert first["report_back_interval"] > 0
        assert first["batch"] == names[:2] and second["batch"] == names[2:]
        for batch in (first, second):
            keepalive = f"{base}/keepalive?job_id={batch['jobid']}&job_state=STARTED"
            assert http.get(keepalive).json() == {"late": False}

        # The engine works in the folders named by the reply, under the shared run folders.
        job_output = run.output_dir / first["job_output_dir"]
        basecall(run.input_dir / first["job_input_dir"], job_output, seconds_per_read=0)
        keepalive = f"{base}/keepalive?job_id={first['jobid']}&job_state=PROCESSING"
        assert http.get(keepalive).json() == {"late": False}
        done = http.get(f"{base}/completed?job_id={first['jobid']}&job_state=DONE")
        failed = http.get(f"{base}/completed?job_id={second['jobid']}&job_state=FAILED")
        assert done.json() == failed.json() == {"ok": True}

        heartbeat = http.get(f"{base}/heartbeat").json()
        # The failed batch comes back in halves, each a batch of its own, as plain batches.
        halves = [http.get(f"{base}/assignwork?engineid=gpu004&batchsize=2").json()]
        halves.append(http.get(f"{base}/assignwork?engineid=gpu004&batchsize=2").json())
        nothing = http.get(f"{base}/assignwork?engineid=gpu004&batchsize=2").json()
    assert heartbeat["status"] == "false" and isinstance(heartbeat["inactivity_interval"], float)
    assert [half["batch"] for half in halves] == [[names[2]], [names[3]]]
    assert all(set(half) >= ORIGINAL_BATCH_KEYS for half in halves)
    assert nothing["batch_size"] == 0 and nothing["jobid"] == "-1" and nothing["batch"] == []
    reads = sorted(
        line[1:].split()[0]
        for fastq in (run.output_dir / "pass").iterdir()
        for line in fastq.read_text().splitlines()[::4]
    )
    assert reads == sorted(read for name in names[:2] for read in run.reads[name])
    assert (run.input_dir / f"DONE_{first['jobid']}_gpu004").is_dir()
    assert (run.input_dir / f"FAILED_{second['jobid']}_gpu005").is_dir()
