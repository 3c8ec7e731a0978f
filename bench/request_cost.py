"""Figure 3: the cost of a request does not depend on the size of the run.

Two real ``bcmanager serve`` processes run side by side: one on a run of 1,000 pending raw files
(the baseline), one on a run of 1,000,000 (100,000 in the quick set). One client, one request at
a time, alternates between them, so both see the same machine at the same moments: assignwork
(batch 10), keepalive, then completed STOPPED, which gives the batch back so that the run keeps
its size. Target: assignwork and keepalive medians on the large run within 1.2x of the small.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from _common import (
    Process,
    Row,
    bcmanager_serve,
    build_run,
    percentile,
    progress,
    run_alone,
)

SMALL = 1_000
QUICK_LARGE = 100_000
FULL_LARGE = 1_000_000
QUICK_CYCLES = 1_000
FULL_CYCLES = 5_000
WARMUP_CYCLES = 200
TARGET_RATIO = 1.2
TIMED = ("assignwork", "keepalive")


def cycle(client: httpx.Client, samples: dict[str, list[float]] | None) -> None:
    """One job's life on one server; latencies go to ``samples`` unless warming up."""
    started = time.perf_counter()
    batch = client.get("/assignwork", params={"engineid": "gpu001", "batchsize": 10}).json()
    assigned = time.perf_counter()
    if not batch["batch"]:
        raise RuntimeError("the run is empty: the benchmark expects every file pending")
    job = {"job_id": batch["jobid"]}
    client.get("/keepalive", params={**job, "job_state": "PROCESSING"}).raise_for_status()
    kept = time.perf_counter()
    client.get("/completed", params={**job, "job_state": "STOPPED"}).raise_for_status()
    if samples is not None:
        samples["assignwork"].append(assigned - started)
        samples["keepalive"].append(kept - assigned)


def measure(full: bool, workdir: Path) -> list[Row]:
    large_size = FULL_LARGE if full else QUICK_LARGE
    cycles = FULL_CYCLES if full else QUICK_CYCLES
    progress(f"request cost: building runs of {SMALL:,} and {large_size:,} pending files")
    small = build_run(workdir, raw=SMALL, label="cost-small")
    large = build_run(workdir, raw=large_size, label="cost-large")
    servers: list[Process] = []
    try:
        for run in (small, large):
            servers.append(bcmanager_serve(run))
            servers[-1].start()
        for server in servers:
            server.wait_answering("/ready")
        samples = {id(server): {route: [] for route in TIMED} for server in servers}
        clients = [httpx.Client(base_url=server.url, timeout=30) for server in servers]
        for index in range(WARMUP_CYCLES + cycles):
            for server, client in zip(servers, clients, strict=True):
                cycle(client, samples[id(server)] if index >= WARMUP_CYCLES else None)
        for client in clients:
            client.close()
    finally:
        for server in servers:
            server.stop()
        small.remove()
        large.remove()
    rows = []
    for route in TIMED:
        base, ours = (samples[id(server)][route] for server in servers)
        ratio = percentile(ours, 50) / percentile(base, 50)
        rows.append(
            Row(
                f"{route} p50 / p99, {large_size:,} vs {SMALL:,} pending",
                f"{percentile(ours, 50) * 1000:.2f} / {percentile(ours, 99) * 1000:.2f} ms",
                f"{percentile(base, 50) * 1000:.2f} / {percentile(base, 99) * 1000:.2f} ms",
                ratio,
                f"p50 <= {TARGET_RATIO}x",
                ratio <= TARGET_RATIO,
            )
        )
    return rows


if __name__ == "__main__":
    run_alone(__doc__, measure)
