"""A complete run's completion command (``BCM_ON_RUN_COMPLETE``): run once per run, ever.

Its record (``runrecord.write_completion``) is written before it starts and again when it
ends, so a manager that restarts knows it ran, and does not run it again even when the
earlier manager stopped before it ended. It runs in a session of its own, stopped with
whatever it started when it times out or the manager stops, without the manager's settings
(its tokens among them) in its environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal

from bcmanager.facility import runrecord
from bcmanager.facility.events import CommandEnded, CommandKilled, Tell
from bcmanager.facility.runs import Run
from bcmanager.paths import COMPLETION_LOG
from bcmanager.settings import Settings
from bcmanager.template import fill

log = logging.getLogger(__name__)

KILL_GRACE = 5.0
"""Seconds a completion command stopped with SIGTERM has to end before SIGKILL."""


async def run_completion_command(settings: Settings, run: Run, tell: Tell) -> None:
    """Run ``run``'s completion command, unless an earlier manager started it already."""
    record = await asyncio.to_thread(runrecord.read_completion, run.output)
    if record is not None:
        if "exit_status" not in record:
            log.warning(
                "run %s: its completion command was started by an earlier manager that "
                "stopped before it ended; it is not run again",
                run.path,
            )
        return
    words = fill(
        shlex.split(settings.on_run_complete or ""),
        {"run_path": run.path, "run_dir": str(run.folder), "output_dir": str(run.output)},
    )
    started = runrecord.now_text()
    await asyncio.to_thread(
        runrecord.write_completion, run.output, {"command": words, "started": started}
    )
    status = await _run(words, run, settings.on_run_complete_timeout, tell)
    await asyncio.to_thread(
        runrecord.write_completion,
        run.output,
        {
            "command": words,
            "started": started,
            "ended": runrecord.now_text(),
            "exit_status": status,
        },
    )
    tell(CommandEnded(run.path, str(status)))


async def _run(words: list[str], run: Run, timeout: float, tell: Tell) -> int | str:
    """Run the command, its output to the run's completion log; its exit status, or why it
    has none."""
    try:
        with open(run.output / COMPLETION_LOG, "ab") as output:
            # A session of its own, so that it is stopped with whatever it starts; the
            # manager's settings, its tokens among them, stay with the manager.
            process = await asyncio.create_subprocess_exec(
                *words,
                stdout=output,
                stderr=output,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                env={key: value for key, value in os.environ.items() if not key.startswith("BCM_")},
            )
            try:
                return await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                await _kill_group(process)
                return f"timed out after {timeout:g} s: killed with its process group"
            except asyncio.CancelledError:  # the manager stops: the record keeps no status
                await _kill_group(process)
                tell(CommandKilled(run.path, "the manager stops"))
                raise
    except OSError as error:
        return f"could not start: {error.strerror or error}"


async def _kill_group(process: asyncio.subprocess.Process) -> None:
    """Stop a command and every process it started in its process group: SIGTERM, and SIGKILL
    for what is left once the command ended or KILL_GRACE seconds passed."""
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal_number)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), KILL_GRACE)
