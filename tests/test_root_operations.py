"""A root of runs under what operators and the operating system do to it: a run deleted while it
is served, more folders than the kernel lets one process watch, the commands an operator runs on
a root (retry, check), an OPERATOR.log that cannot be written, and a completion command that
hangs. Where the behaviour crosses a process, a real ``bcmanager serve`` runs it; the runs are
laid out as MinKNOW lays them out, with real POD5 files."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import Run, Server, minknow_run, wait_for


def write_summary(folder: Path) -> None:
    """MinKNOW's final summary: the run stopped sequencing."""
    (folder / "final_summary_FAX00000_0123abcd_89abcdef.txt").write_text("instrument=X1\n")


def listed_runs(server: Server) -> list[str]:
    return [entry["path"] for entry in server.get("/runs").json()["runs"]]


def drain_server(server: Server, run: Run, headers: dict[str, str] | None = None) -> None:
    """Basecall every batch the real manager offers until it offers none."""
    for _ in range(50):
        batch = httpx.get(
            f"{server.url}/assignwork",
            params={"engineid": "gpu1", "batchsize": 10},
            headers=headers,
            timeout=10,
        ).json()
        if not batch["batch"]:
            return
        run.basecall(batch["job_output_dir"], batch["batch"])
        done = httpx.get(
            f"{server.url}/completed",
            params={"job_id": batch["jobid"], "job_state": "DONE"},
            headers=headers,
            timeout=10,
        )
        assert done.json() == {"ok": True}, done.text
    raise AssertionError("the runs never drained")


# -- 1. a run deleted while served -------------------------------------------------------------


@pytest.mark.parametrize("seen_by", ["events", "rescan"])
def test_a_run_deleted_while_served_is_dropped_in_one_line_and_holds_nothing(
    run: Run, start_server: Callable[..., Server], seen_by: str
) -> None:
    """An operator deletes a whole run (``rm -rf`` of its folder) while a real manager serves
    it and another: the run is dropped with one line of the log, /heartbeat answers 200 the
    whole time, and the facility's phase ends with the run that is left. So it goes whether
    the watcher's events tell, or the rescan (a network filesystem: no events)."""
    kept = minknow_run(run, "expA", "FAX11111")
    gone = minknow_run(run, "expB", "FAX22222", ("pod5_pass", "pod5_fail"))
    write_summary(run.input_dir / kept)
    polling = "true" if seen_by == "rescan" else "false"
    server = start_server(BCM_RESCAN_INTERVAL="0.3", BCM_FORCE_POLLING=polling)
    assert sorted(listed_runs(server)) == sorted([kept, gone])
    logged = len(server.log.read_text().splitlines())

    shutil.rmtree(run.input_dir / gone)
    deadline = time.monotonic() + 2.0  # the watcher's events, then several rescans
    while time.monotonic() < deadline:
        beat = server.get("/heartbeat")
        assert beat.status_code == 200 and beat.json()["problems"] == [], beat.text
        time.sleep(0.05)
    assert listed_runs(server) == [kept]
    lines = server.log.read_text().splitlines()[logged:]
    assert len(lines) == 1 and f"run gone run={gone} " in lines[0], lines

    drain_server(server, run)
    wait_for(lambda: server.get("/heartbeat").json()["phase"] == "complete", 10, "the end")
    assert server.get("/heartbeat").status_code == 200
