"""Figure 2: protocol throughput over loopback, 8, 64 and 1,000 concurrent engines.

Each engine is one coroutine with its own httpx client and one keep-alive connection, as each
real engine is its own process. It cycles without pause: /assignwork (batch 10), /keepalive,
writes one FASTQ per raw file into its job's pass/ folder (as Dorado does), /completed DONE. The
same load generator, in this process, drives two servers in turn on runs of the same shape:

- bcmanager: a real ``bcmanager serve`` subprocess;
- the floor: bench/baseline_app.py, a bare Starlette app on the same uvicorn settings doing the
  same filesystem calls per route with no state.

Requests are counted in a measured window after a warm-up. Besides jobs per second and p50/p99
per route, each server's CPU time per job is read from /proc: on 2 cores the load generator
(one Python process) may saturate before the server, and then jobs per second show the client's
limit for both while CPU per job still shows what each server spends.
"""

from __future__ import annotations

import asyncio
import math
import random
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import (
    FASTQ_BYTES,
    Process,
    Row,
    SyntheticRun,
    bcmanager_serve,
    build_run,
    free_port,
    percentile,
    progress,
    run_alone,
    write_files,
)

from bcmanager.paths import PASS

# httpcore imports sniffio afresh for every connection lock it sets up and falls back to asyncio
# when that fails; since anyio 4.11 sniffio is not installed, and Python does not cache a failed
# import, so each request searched sys.path (encode/httpcore discussion 1102, pull request 1103).
# Marking it absent makes that failure immediate: a third of the load generator's CPU otherwise.
sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

BCMANAGER = "bcmanager"
FLOOR = "starlette"  # bench/baseline_app.py on bare Starlette: the baseline
FRAMEWORK_FLOOR = "fastapi"  # the same on FastAPI: what the framework costs by itself
FRAMEWORK_FLOOR_ENGINES = 8
BASELINE_UP = "/keepalive?job_id=1&job_state=ASSIGNED"  # answers 200 once the baseline serves
ENGINES = (8, 64, 1000)
PACED_ENGINES = 1000
# A real engine waits minutes between calls (a keepalive every 45 s while Dorado works); paced
# engines wait this long, so a thousand of them offer about 250 requests a second.
PACED_PAUSE = 4.0
ROUTES = ("assignwork", "keepalive", "completed")
BATCH = 10
FASTQ_NAME = "calls.fastq"  # one FASTQ per job, as `dorado basecaller --emit-fastq` writes
TARGET_RATIO = 1.5
KEEPALIVE_P99_TARGET = 0.050
# Seconds of warm-up and of measurement. A thousand clients take a while to connect and settle;
# paced engines start at random moments within one pause.
QUICK_WINDOWS = {8: (1.0, 4.0), 64: (1.0, 4.0), 1000: (4.0, 6.0), "paced": (5.0, 10.0)}
FULL_WINDOWS = {8: (3.0, 20.0), 64: (3.0, 20.0), 1000: (10.0, 30.0), "paced": (8.0, 60.0)}
JOBS_PER_SECOND_CEILING = 600  # sizes each run so that no engine ever finds it empty


@dataclass
class Load:
    """What one server did under one load in the measured window."""

    seconds: float = 0.0
    jobs: int = 0
    server_cpu: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {r: [] for r in ROUTES})
    empty_batches: int = 0

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds

    @property
    def cpu_per_job(self) -> float:
        return self.server_cpu / self.jobs

    def p(self, route: str, share: float) -> float:
        return percentile(self.latencies[route], share)


async def drive(
    server: Process, output_dir: Path, engines: int, window: tuple[float, float], pause: float
) -> Load:
    """Run ``engines`` engines against ``server``, each waiting ``pause`` seconds before each
    call; measure during ``window`` (warm-up, length)."""
    warmup, length = window
    load = Load(seconds=length)
    begin = time.perf_counter() + warmup
    end = begin + length
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    tls = ssl.create_default_context()  # unused on http://, but each client would load its own
    rng = random.Random(0)

    async def call(client: httpx.AsyncClient, route: str, params: dict[str, str | int]) -> Any:
        if pause:
            await asyncio.sleep(pause)
        started = time.perf_counter()
        reply = await client.get(f"/{route}", params=params)
        finished = time.perf_counter()
        reply.raise_for_status()
        if started >= begin and finished <= end:
            load.latencies[route].append(finished - started)
        return reply.json()

    async def engine(index: int, delay: float) -> None:
        name = f"gpu{index:04d}"
        await asyncio.sleep(delay)
        async with httpx.AsyncClient(
            base_url=server.url, limits=limits, timeout=120, verify=tls
        ) as client:
            while not stop.is_set():
                batch = await call(client, "assignwork", {"engineid": name, "batchsize": BATCH})
                if not batch["batch"]:
                    load.empty_batches += 1
                    await asyncio.sleep(0.1)
                    continue
                job = batch["jobid"]
                await call(client, "keepalive", {"job_id": job, "job_state": "PROCESSING"})
                output = output_dir / batch["job_output_dir"] / PASS
                output.mkdir()
                write_files(output, [FASTQ_NAME], FASTQ_BYTES)
                await call(client, "completed", {"job_id": job, "job_state": "DONE"})
                if begin <= time.perf_counter() <= end:
                    load.jobs += 1

    async def meter() -> None:
        await asyncio.sleep(max(0.0, begin - time.perf_counter()))
        cpu = server.cpu_seconds()
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        load.server_cpu = server.cpu_seconds() - cpu
        stop.set()

    tasks = [asyncio.create_task(engine(index, rng.uniform(0, pause))) for index in range(engines)]
    await meter()
    _, unfinished = await asyncio.wait(tasks, timeout=30 + 3 * pause)
    for task in unfinished:
        task.cancel()
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise RuntimeError(f"an engine failed: {task.exception()!r}")
    return load


def server_for(run: SyntheticRun, who: str) -> Process:
    """``bcmanager serve``, or bench/baseline_app.py with ``who`` as its framework."""
    if who == BCMANAGER:
        return bcmanager_serve(run)
    port = free_port()
    app = Path(__file__).with_name("baseline_app.py")
    paths = [str(run.paths.input_dir), str(run.paths.output_dir)]
    command = [sys.executable, str(app), who, *paths, str(port)]
    return Process(command, {}, run.root / f"{who}-{port}.log", port)


def one_load(
    workdir: Path, who: str, engines: int, window: tuple[float, float], pause: float
) -> Load:
    ceiling = JOBS_PER_SECOND_CEILING if not pause else 2 * engines / (3 * pause)
    files = math.ceil(ceiling * sum(window) * BATCH) + engines * BATCH
    run = build_run(workdir, raw=files, label=f"{who}{engines}")
    try:
        with server_for(run, who) as server:
            server.start()
            server.wait_answering(
                "/ready" if who == BCMANAGER else "/keepalive?job_id=1&job_state=A"
            )
            load = asyncio.run(drive(server, run.paths.output_dir, engines, window, pause))
    finally:
        run.remove()
    if load.empty_batches:
        raise RuntimeError(f"{who} ran out of files: raise JOBS_PER_SECOND_CEILING")
    paced = f", pausing {pause:.0f} s" if pause else ""
    progress(
        f"{who:9s} {engines:4d} engines{paced}: {load.jobs_per_second:6.1f} jobs/s, server CPU "
        f"{load.cpu_per_job * 1000:.2f} ms/job; "
        + ", ".join(
            f"{route} p50 {load.p(route, 50) * 1000:.1f} p99 {load.p(route, 99) * 1000:.1f} ms"
            for route in ROUTES
        )
    )
    return load


def latency_row(label: str, route: str, ours: Load, base: Load, target: float | None) -> Row:
    p99 = ours.p(route, 99)
    return Row(
        f"{route} p50 / p99, {label}",
        f"{ours.p(route, 50) * 1000:.1f} / {p99 * 1000:.1f} ms",
        f"{base.p(route, 50) * 1000:.1f} / {base.p(route, 99) * 1000:.1f} ms",
        p99 / base.p(route, 99),
        "" if target is None else f"p99 < {target * 1000:.0f} ms",
        None if target is None else p99 < target,
    )


def measure(full: bool, workdir: Path) -> list[Row]:
    windows = FULL_WINDOWS if full else QUICK_WINDOWS
    rows = []
    for engines in ENGINES:
        base = one_load(workdir, FLOOR, engines, windows[engines], 0.0)
        ours = one_load(workdir, BCMANAGER, engines, windows[engines], 0.0)
        ratio = base.jobs_per_second / ours.jobs_per_second
        cpu_ratio = ours.cpu_per_job / base.cpu_per_job
        rows += [
            Row(
                f"throughput, {engines} engines",
                f"{ours.jobs_per_second:.0f} jobs/s",
                f"{base.jobs_per_second:.0f} jobs/s",
                ratio,
                f"<= {TARGET_RATIO}",
                ratio <= TARGET_RATIO,
            ),
            Row(
                f"server CPU per job, {engines} engines",
                f"{ours.cpu_per_job * 1000:.2f} ms",
                f"{base.cpu_per_job * 1000:.2f} ms",
                cpu_ratio,
                f"<= {TARGET_RATIO}",
                cpu_ratio <= TARGET_RATIO,
            ),
        ]
        if engines == FRAMEWORK_FLOOR_ENGINES:
            framework = one_load(workdir, FRAMEWORK_FLOOR, engines, windows[engines], 0.0)
            rows.append(
                Row(
                    f"server CPU per job, {engines} engines, vs a bare FastAPI app",
                    f"{ours.cpu_per_job * 1000:.2f} ms",
                    f"{framework.cpu_per_job * 1000:.2f} ms",
                    ours.cpu_per_job / framework.cpu_per_job,
                    "",
                    None,
                )
            )
        rows += [latency_row(f"{engines} engines", r, ours, base, None) for r in ROUTES]
    label = f"{PACED_ENGINES} paced engines"
    base = one_load(workdir, FLOOR, PACED_ENGINES, windows["paced"], PACED_PAUSE)
    ours = one_load(workdir, BCMANAGER, PACED_ENGINES, windows["paced"], PACED_PAUSE)
    rows += [
        latency_row(label, r, ours, base, KEEPALIVE_P99_TARGET if r == "keepalive" else None)
        for r in ROUTES
    ]
    return rows


if __name__ == "__main__":
    run_alone(__doc__, measure)
