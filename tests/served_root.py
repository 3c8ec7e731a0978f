"""A root of runs served by a real ``bcmanager serve`` process on 127.0.0.1, and a test engine
that speaks the protocol to it over HTTP (the tests of seals, moved runs and a run's end).

The engine writes one FASTQ per raw file, holding that file's read ids from the root's ledger
(found by the file's name, so that a raw folder reached through a symlink or moved since is no
matter); ``reads_everywhere`` reads every merged FASTQ under OUTPUT_DIR, so that a read merged
twice, or into another run's output, is seen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from bcmanager.sim.sequencer import pod5_bytes
from conftest import Root, Server, fastq, wait_for


class Served:
    """``bcmanager serve`` on ``root``, started again as often as the test asks; every process
    is stopped by ``close``."""

    def __init__(self, root: Root, logs: Path, **env: str) -> None:
        self.root = root
        self.logs = logs
        self.env = {"BCM_RESCAN_INTERVAL": "0.3", **env}
        self.servers: list[Server] = []

    def start(self, **env: str) -> Server:
        server = Server(self.root, self.logs / f"serve{len(self.servers)}.log", **self.env, **env)
        self.servers.append(server)
        return server.start()

    def log(self) -> str:
        return "".join(server.log.read_text() for server in self.servers if server.log.exists())

    def close(self) -> None:
        for server in self.servers:
            server.stop()


def assign(server: Server, size: int = 10, engine: str = "gpu1") -> dict[str, Any]:
    reply = server.get("/assignwork", engineid=engine, batchsize=size)
    assert reply.status_code == 200, reply.text
    batch: dict[str, Any] = reply.json()
    return batch


def complete(server: Server, jobid: str, state: str = "DONE") -> httpx.Response:
    return server.get("/completed", job_id=jobid, job_state=state)


def basecall(root: Root, batch: dict[str, Any]) -> None:
    """One FASTQ per raw file of the batch in its job's output folder, with the file's reads."""
    by_name = {path.name: reads for path, reads in root.reads.items()}
    folder = root.output_dir / batch["job_output_dir"] / "pass"
    folder.mkdir(parents=True, exist_ok=True)
    for name in batch["batch"]:
        (folder / name.replace(".pod5", ".fastq")).write_text(fastq(by_name[name]))


def drain(server: Server, root: Root, size: int = 10) -> list[dict[str, Any]]:
    """Basecall every batch offered until none is; the batches, in order."""
    batches = []
    for _ in range(100):
        batch = assign(server, size)
        if not batch["batch"]:
            return batches
        basecall(root, batch)
        reply = complete(server, batch["jobid"])
        assert reply.json() == {"ok": True}, reply.text
        batches.append(batch)
    raise AssertionError("the runs never drained")


def runs(server: Server) -> dict[str, dict[str, Any]]:
    reply = server.get("/runs")
    assert reply.status_code == 200, reply.text
    return {entry["path"]: entry for entry in reply.json()["runs"]}


def wait_for_run(server: Server, path: str, timeout: float, what: str, **files: int) -> None:
    """Wait until /runs shows run ``path`` with these file counts (e.g. ``pending=1``)."""

    def there() -> bool:
        entry = runs(server).get(path)
        return entry is not None and all(entry["files"][k] == v for k, v in files.items())

    wait_for(there, timeout, what)


def summary(folder: Path, files: int | None = None) -> None:
    """MinKNOW's final summary, naming how many POD5 files it wrote when ``files`` is given."""
    lines = ["instrument=X1", "flow_cell_id=FAX00000"]
    if files is not None:
        lines.append(f"pod5_files_in_final_dest={files}")
    (folder / "final_summary_FAX00000_0123abcd_89abcdef.txt").write_text("\n".join(lines) + "\n")


def half_written(root: Root, path: Path, reads: int = 2) -> bytes:
    """The first half of a POD5 file at ``path``, as MinKNOW leaves one while it writes it;
    returns the rest, which ``finish`` writes in place (the same file, its folder untouched)."""
    data, root.reads[path] = pod5_bytes(path.name, reads, seed=len(root.reads))
    path.write_bytes(data[: len(data) // 2])
    return data[len(data) // 2 :]


def finish(path: Path, rest: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(rest)


def reads_everywhere(output_dir: Path) -> dict[str, list[str]]:
    """Read id -> each merged FASTQ (relative to OUTPUT_DIR) that holds it, over all of
    OUTPUT_DIR: job folders' own output (not merged) excluded."""
    found: dict[str, list[str]] = {}
    for path in sorted(output_dir.rglob("*.fastq")):
        relative = path.relative_to(output_dir)
        if not {"pass", "fail"} & set(relative.parts) or any(
            part.startswith(("TMPOUTPUT_", "EXPIREDOUTPUT_", "LOGOUTPUT_", "EMPTYOUTPUT_"))
            for part in relative.parts
        ):
            continue
        for line in path.read_text().splitlines()[::4]:
            found.setdefault(line[1:].split()[0], []).append(str(relative))
    return found


def check(root: Root, *args: str) -> subprocess.CompletedProcess[str]:
    """``bcmanager check`` on the root, as an operator runs it."""
    env = {
        **os.environ,
        "BCM_INPUT_DIR": str(root.input_dir),
        "BCM_OUTPUT_DIR": str(root.output_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "bcmanager", "check", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def record(path: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(path.read_text())
    return value
