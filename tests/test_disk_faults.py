"""Disk faults injected where the manager touches the disk (docs/design.md, invariants 5 and 7).

ENOSPC, EIO and EACCES are raised at each step of assignment and of each end of a job. Before a
commit point the request answers 503 with a JSON reason, and nothing is left behind; after it,
the change stands, the request answers ok, and the rescan finishes the rest. Either way the
service keeps serving and ``bcmanager check`` ends clean.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections import Counter
from pathlib import Path

import httpx
import pytest

from bcmanager.cli.check import Severity, inspect
from bcmanager.core.folders import DiskOps, RunFolders
from bcmanager.core.manager import Manager
from bcmanager.paths import ACCOUNT_FILE, RunPaths
from conftest import Clock, Run, fastq, serving, tree

ERRNOS = [errno.ENOSPC, errno.EIO, errno.EACCES]


class FaultyOps(DiskOps):
    """Raises OSError(code) at the nth call of one method after ``arm``; with ``stick``, again
    at every call on the same path until ``release`` (a fault that repeats)."""

    def __init__(self) -> None:
        self.armed: tuple[str, int, int] | None = None
        self.calls: Counter[str] = Counter()
        self.fired = False
        self.stuck: tuple[str, int, Path] | None = None
        self.stick = False

    def arm(self, method: str, code: int, nth: int, *, stick: bool = False) -> None:
        self.armed, self.fired, self.stick = (method, code, nth), False, stick
        self.calls.clear()

    def release(self) -> None:
        self.stuck = None

    def _step(self, method: str, path: Path) -> None:
        if self.stuck is not None and self.stuck[0] == method and self.stuck[2] == path:
            raise OSError(self.stuck[1], os.strerror(self.stuck[1]), str(path))
        if self.armed is None or self.armed[0] != method:
            return
        self.calls[method] += 1
        _, code, nth = self.armed
        if self.calls[method] == nth:
            self.armed, self.fired = None, True
            if self.stick:
                self.stuck = (method, code, path)
            raise OSError(code, os.strerror(code), str(path))

    def mkdir(self, path: Path) -> None:
        self._step("mkdir", path)
        super().mkdir(path)

    def symlink(self, target: str, link: Path) -> None:
        self._step("symlink", link)
        super().symlink(target, link)

    def rename(self, source: Path, destination: Path) -> None:
        self._step("rename", source)
        super().rename(source, destination)

    def rmtree(self, path: Path) -> None:
        self._step("rmtree", path)
        super().rmtree(path)


def faulty_manager(
    run: Run, clock: Clock | None = None, **settings: float
) -> tuple[Manager, FaultyOps]:
    ops = FaultyOps()
    paths = RunPaths(run.input_dir.resolve(), run.output_dir.resolve())
    manager = Manager(run.settings(**settings), RunFolders(paths, ops), clock=clock or Clock())
    return manager, ops


async def get(client: httpx.AsyncClient, route: str, **params: str | int) -> httpx.Response:
    return await client.get(route, params=params)


async def snapshot(run: Run, client: httpx.AsyncClient) -> tuple[object, ...]:
    """Both folders, the files by state and the leases (not the clocks and rates)."""
    status = (await get(client, "/status")).json()
    leases = [{**job, "seconds_left": None} for job in status["jobs"]]
    return tree(run.input_dir), tree(run.output_dir), status["files"], leases


def assert_refused(reply: httpx.Response, code: int) -> None:
    assert reply.status_code == 503, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert os.strerror(code) in reply.json()["detail"]


def write_output(run: Run, batch: dict) -> None:
    output = run.output_dir / batch["job_output_dir"]
    (output / "pass").mkdir()
    for name in batch["batch"]:
        (output / "pass" / name.replace(".pod5", ".fastq")).write_text(fastq(run.reads[name]))
    (output / "basecaller.log").write_text("log")


async def clean_soon(paths: RunPaths, seconds: float = 5.0) -> None:
    """Until ``check`` finds nothing (the rescan finishes interrupted tails), or fail."""
    for _ in range(int(seconds / 0.05)):
        if inspect(paths).ok:
            return
        await asyncio.sleep(0.05)
    raise AssertionError([str(problem) for problem in inspect(paths).failures])


# Each call assignwork makes, in order, for a batch of two files.
ASSIGN_STEPS = [("mkdir", 1), ("symlink", 1), ("symlink", 2), ("mkdir", 2), ("rename", 1)]


@pytest.mark.parametrize("code", ERRNOS, ids=errno.errorcode.get)
@pytest.mark.parametrize(("method", "nth"), ASSIGN_STEPS, ids=lambda v: str(v))
async def test_assign_refused_by_the_disk_leaves_nothing_and_keeps_serving(
    run: Run, method: str, nth: int, code: int
) -> None:
    names = run.add_many(3)
    manager, ops = faulty_manager(run)
    async with serving(manager) as client:
        before = await snapshot(run, client)
        ops.arm(method, code, nth)
        refused = await get(client, "/assignwork", engineid="gpu1", batchsize=2)
        after = await snapshot(run, client)
        heartbeat = await get(client, "/heartbeat")
        again = await get(client, "/assignwork", engineid="gpu1", batchsize=2)
    assert ops.fired
    assert_refused(refused, code)
    assert after == before
    assert heartbeat.status_code == 200
    assert again.status_code == 200 and again.json()["batch"] == names[:2]
    assert inspect(manager.paths).problems == []  # the lock is released: no note either


# Each call /completed makes, in order, for a job of two files with output; the first is the
# commit point of each ending.
COMPLETION_STEPS = [
    ("DONE", "rename", 1),  # ASSIGNED_ -> DONE_: the commit
    ("DONE", "rename", 2),  # first FASTQ into pass/
    ("DONE", "rename", 3),  # second FASTQ into pass/
    ("DONE", "rename", 4),  # TMPOUTPUT_ -> LOGOUTPUT_
    ("FAILED", "rename", 1),  # ASSIGNED_ -> FAILED_: the commit
    ("FAILED", "rename", 2),  # TMPOUTPUT_ -> FAILEDOUTPUT_
    ("STOPPED", "rename", 1),  # ASSIGNED_ -> .bcm-tmp-ASSIGNED_: the commit
    ("STOPPED", "rmtree", 1),  # the output, discarded
    ("STOPPED", "rmtree", 2),  # the retired lease
]
# A failed attempt is not a bad file: its files are pending again, to be retried.
FILES_AFTER = {"DONE": "done", "FAILED": "pending", "STOPPED": "pending"}


@pytest.mark.parametrize("code", ERRNOS, ids=errno.errorcode.get)
@pytest.mark.parametrize(("ending", "method", "nth"), COMPLETION_STEPS, ids=lambda v: str(v))
async def test_completion_refused_by_the_disk_before_or_after_its_commit(
    run: Run, ending: str, method: str, nth: int, code: int
) -> None:
    run.add_many(2)
    manager, ops = faulty_manager(run, rescan_interval=0.05)
    committed = (method, nth) != ("rename", 1)
    async with serving(manager) as client:
        batch = (await get(client, "/assignwork", engineid="gpu1", batchsize=2)).json()
        write_output(run, batch)
        before = await snapshot(run, client)
        ops.arm(method, code, nth, stick=committed)
        first = await get(client, "/completed", job_id=batch["jobid"], job_state=ending)
        after_first = await snapshot(run, client)
        alive = await get(client, "/keepalive", job_id=batch["jobid"], job_state="PROCESSING")
        if committed:
            # The tail keeps failing: check, /status and /heartbeat all say so.
            await asyncio.sleep(0.2)  # rescans retry it, and fail again
            problems = inspect(manager.paths).failures
            shown = (await get(client, "/status")).json()["job_problems"]
            beat = await get(client, "/heartbeat")
            ops.release()
            await clean_soon(manager.paths)
        retry = await get(client, "/completed", job_id=batch["jobid"], job_state=ending)
        status = (await get(client, "/status")).json()
    assert ops.fired
    if committed:
        assert first.json() == {"ok": True}
        assert alive.json() == {"late": True}
        assert {p.severity for p in problems} == {Severity.REPAIR}
        assert len(shown) == 1 and batch["jobid"] in shown[0] and os.strerror(code) in shown[0]
        assert beat.status_code == 200 and beat.json()["problems"] == shown
    else:
        assert_refused(first, code)
        # Nothing changed but the account of the job's reads, made before the commit (and
        # made again when the engine reports again).
        input_after, output_after, *rest = after_first
        assert isinstance(output_after, dict)
        if ending == "DONE":
            account = f"{batch['job_output_dir']}/{ACCOUNT_FILE}"
            assert output_after.pop(account).endswith(" bytes")
        assert (input_after, output_after, *rest) == before
        assert alive.json() == {"late": False}
    assert retry.json() == {"ok": True}
    assert status["files"][FILES_AFTER[ending]] == 2 and status["jobs"] == []
    merged = sorted(os.listdir(run.output_dir / "pass"))
    expected = [f"job_id_{batch['jobid']}_{n.replace('.pod5', '.fastq')}" for n in batch["batch"]]
    assert merged == (expected if ending == "DONE" else [])
    assert inspect(manager.paths).problems == []  # the lock is released: no note either


# Each call the reaper makes to take back an expired lease.
EXPIRY_STEPS = [
    ("rename", 1),  # ASSIGNED_ -> .bcm-tmp-ASSIGNED_: the commit; the reaper tries again
    ("rename", 2),  # TMPOUTPUT_ -> EXPIREDOUTPUT_
    ("rmtree", 1),  # the retired lease
]


@pytest.mark.parametrize("code", ERRNOS, ids=errno.errorcode.get)
@pytest.mark.parametrize(("method", "nth"), EXPIRY_STEPS, ids=lambda v: str(v))
async def test_expiry_refused_by_the_disk_is_finished_later(
    run: Run, method: str, nth: int, code: int
) -> None:
    names = run.add_many(2)
    clock = Clock()
    manager, ops = faulty_manager(run, clock, report_back_period=1, rescan_interval=0.05)
    async with serving(manager) as client:
        batch = (await get(client, "/assignwork", engineid="gpu1", batchsize=2)).json()
        write_output(run, batch)
        ops.arm(method, code, nth)
        clock.now += 2  # the reaper, ticking every quarter of a lease, finds it expired
        for _ in range(100):
            if (await get(client, "/status")).json()["files"]["pending"] == 2:
                break
            await asyncio.sleep(0.05)
        late = await get(client, "/completed", job_id=batch["jobid"], job_state="DONE")
        await clean_soon(manager.paths)
        again = await get(client, "/assignwork", engineid="gpu2", batchsize=2)
    assert ops.fired
    assert late.status_code == 409
    assert again.json()["batch"] == names
    aside = run.output_dir / batch["job_output_dir"].replace("TMPOUTPUT_", "EXPIREDOUTPUT_")
    assert sorted(os.listdir(aside / "pass")) == [n.replace(".pod5", ".fastq") for n in names]
    assert os.listdir(run.output_dir / "pass") == []
