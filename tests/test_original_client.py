"""An engine that speaks only docs/protocol.md, as the original BCProcessor does: plain GET requests
with the original parameter names, reading only the original keys, against a real server."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bcmanager.sim.basecaller import basecall
from conftest import Root, Run, Server

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


def test_original_client_and_watchdog_work_unchanged_against_a_root(tmp_path: Path) -> None:
    """Against a root of two runs the original client joins job_input_dir and job_output_dir
    (now with subfolders) to its configured folders, as it always did, and each run's reads
    land in that run's output; the watchdog sees the manager idle as before."""
    root = Root(tmp_path)
    one = root.run("exp", "s1", "FAX11111")
    two = root.run("exp", "s2", "FAX22222")
    root.add(one / "pod5", 2)
    root.add(two / "pod5_pass", 2)
    server = Server(
        Run(root.input_dir, root.output_dir), tmp_path / "serve.log", BCM_SHUTDOWN_INTERVAL="1"
    ).start()
    base = server.url
    try:
        with httpx.Client(timeout=10) as http:
            for _ in range(2):
                batch = http.get(f"{base}/assignwork?engineid=gpu004&batchsize=10").json()
                assert set(batch) >= ORIGINAL_BATCH_KEYS and batch["batch_size"] == 2
                job_input = os.path.join(str(root.input_dir), batch["job_input_dir"])
                job_output = os.path.join(str(root.output_dir), batch["job_output_dir"])
                basecall(Path(job_input), Path(job_output), seconds_per_read=0)
                done = http.get(f"{base}/completed?job_id={batch['jobid']}&job_state=DONE")
                assert done.json() == {"ok": True}
            deadline = time.monotonic() + 10
            while http.get(f"{base}/heartbeat").json()["status"] != "true":
                assert time.monotonic() < deadline, "the watchdog never saw the manager idle"
                time.sleep(0.1)
    finally:
        server.stop()
    for folder in (one, two):
        out = root.output_dir / folder.relative_to(root.input_dir)
        assert sorted(root.reads_out(out)) == sorted(root.reads_in(folder))
