"""Running the basecaller: its stderr passed on while its tail is kept, its whole process group
signalled, and the record of each attempt (``paths.ATTEMPT_FILE``: exit code, signal, run time,
the tail of stderr) written at the top of the job's output folder."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bcmanager import paths
from bcmanager.models import JobState
from bcmanager.records import write_record

STDERR_TAIL_BYTES = 4096
"""The end of the basecaller's stderr kept for the record of an attempt; the rest only passes."""
STDERR_LAST_LINE_CHARS = 300
STDERR_DRAIN_TIMEOUT = 2.0
"""Seconds to wait, once the basecaller has exited, for the rest of its stderr: a process it left
running may hold the pipe open for ever (that one's stderr is still passed on afterwards)."""
RECORD_WRITE_TIMEOUT = 5.0
"""Seconds writing the record of an attempt may take (a hung network mount must not keep the
batch from being reported)."""
STATS_CANCEL_GRACE = 2.0
"""Seconds the statistics get, once told to stop, to write what they have read."""
CANNOT_EXECUTE = {126: "found but cannot be executed", 127: "command not found"}
"""Exit codes by which a POSIX shell says it could not run a command at all."""


class StderrTee(asyncio.Protocol):
    """The reading end of the basecaller's stderr: each chunk goes on to the agent's own stderr
    as it comes, and only the last ``limit`` bytes are kept, however much the basecaller prints.

    A pipe of our own rather than asyncio's ``stderr=PIPE``: with that, ``Process.wait()`` would
    wait until every process holding the pipe is gone, and a helper the basecaller left running
    would keep the job (and its lease) open for ever.
    """

    def __init__(self, sink: int, limit: int = STDERR_TAIL_BYTES) -> None:
        self._sink: int | None = sink
        self._limit = limit
        self._tail = bytearray()
        self.total = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, sink: int) -> tuple[StderrTee, asyncio.BaseTransport, int]:
        """A tee reading a new pipe, its transport, and the pipe's writing end for the child
        (the caller closes that once the child has it)."""
        read_end, write_end = os.pipe()
        try:
            pipe = os.fdopen(read_end, "rb", buffering=0)
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            raise
        try:
            transport, tee = await asyncio.get_running_loop().connect_read_pipe(
                lambda: cls(sink), pipe
            )
        except BaseException:
            pipe.close()
            os.close(write_end)
            raise
        return tee, transport, write_end

    def data_received(self, data: bytes) -> None:
        self.total += len(data)
        self._echo(data)
        self._tail += data[-self._limit :]
        del self._tail[: -self._limit]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    async def drained(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the end of the stream; True if it came."""
        with suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        return self.closed.done()

    @property
    def tail(self) -> bytes:
        return bytes(self._tail)

    def _echo(self, data: bytes) -> None:
        """Write all of ``data`` to the sink, as the basecaller would have; a sink that fails
        is dropped (the tail is still kept, and the pipe still drained)."""
        view = memoryview(data)
        while view and self._sink is not None:
            try:
                written = os.write(self._sink, view)
            except InterruptedError:
                continue
            except OSError:
                self._sink = None
                return
            view = view[written:]


async def start_basecaller(
    argv: list[str], sink: int
) -> tuple[asyncio.subprocess.Process, StderrTee]:
    """Start the basecaller without a shell, in a process group of its own, its stderr passed
    on to ``sink`` through a ``StderrTee``. OSError or ValueError (a NUL byte in a word) when
    it cannot start."""
    tee, pipe, write_end = await StderrTee.open(sink)
    try:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stderr=write_end,
                start_new_session=True,
            )
        finally:
            os.close(write_end)  # the child has its copy: the pipe ends when the child's does
    except (OSError, ValueError):
        pipe.close()
        raise
    return process, tee


def stderr_summary(tail: bytes) -> tuple[str, str]:
    """The tail of stderr as text, and its last non-empty line (bounded)."""
    text = tail.decode("utf-8", errors="replace")
    last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
    if len(last) > STDERR_LAST_LINE_CHARS:
        last = last[: STDERR_LAST_LINE_CHARS - 1] + "\u2026"
    return text, last


def exit_status(returncode: int | None) -> tuple[int | None, str | None]:
    """(exit code, signal name) of a return code as asyncio gives it: -N for signal N."""
    if returncode is None:
        return None, None
    if returncode >= 0:
        return returncode, None
    try:
        return None, signal.Signals(-returncode).name
    except ValueError:
        return None, f"SIG{-returncode}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of the basecaller on a job, from just before it was started."""

    jobid: str
    engine: str
    command: list[str]
    started: str
    started_at: float

    def record(
        self,
        *,
        outcome: JobState,
        returncode: int | None,
        ended_at: float,
        ended: str,
        tail: bytes = b"",
        stderr_bytes: int = 0,
        error: str | None = None,
    ) -> dict[str, object]:
        """The JSON object of ``paths.ATTEMPT_FILE`` (documented in docs/reliability.md)."""
        exit_code, signal_name = exit_status(returncode)
        stderr_tail, last_line = stderr_summary(tail)
        return {
            "jobid": self.jobid,
            "engine": self.engine,
            "command": self.command,
            "outcome": outcome.value,
            "exit_code": exit_code,
            "signal": signal_name,
            "seconds": max(0.0, ended_at - self.started_at),
            "started": self.started,
            "ended": ended,
            "stderr_tail": stderr_tail,
            "stderr_last_line": last_line,
            "stderr_bytes": stderr_bytes,
            "error": error,
        }


def write_attempt(folder: Path, record: Mapping[str, object]) -> None:
    """Write the record at the top of ``folder`` (``records.write_record``)."""
    write_record(
        folder, paths.ATTEMPT_FILE, json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    )


def signal_group(pgid: int, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, signum)
