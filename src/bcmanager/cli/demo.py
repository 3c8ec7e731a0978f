"""``bcmanager demo``: a whole run on one laptop, so a newcomer sees the flow in one command.

The real manager serves a demo folder; a simulated sequencer writes real POD5 files into it over
a couple of minutes; three real ``bcmanager agent`` processes basecall them with the simulated
basecaller. The terminal shows the run's progress and what its reads come to as they are
counted; when sequencing has stopped and the queue is drained it says so and where the run's
report is, and keeps the manager up for /docs and /status. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shlex
import shutil
import signal
import sys
from pathlib import Path

import uvicorn

from bcmanager.cli.status import reads_summary
from bcmanager.core.manager import Manager
from bcmanager.facility.facility import Facility
from bcmanager.http.app import create_app
from bcmanager.models import RunPhase
from bcmanager.paths import REPORT_HTML
from bcmanager.settings import Settings
from bcmanager.sim.sequencer import run_sequencer

MARKER = ".bcmanager-demo"  # a folder with this file was made by the demo and may be wiped
REPORT_EVERY = 2.0
DEMO_BARCODES = 4
REPORT_WAIT = 30.0  # seconds a complete run's report is waited for before the demo says so


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run a simulated sequencer and three simulated GPU agents against a real manager",
        description="A whole run on this machine: the manager, a simulated sequencer writing "
        "real POD5 files, and agents running a simulated basecaller. No GPU needed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--folder", type=Path, default=Path("data/demo"), help="demo run folder")
    demo.add_argument("--files", type=int, default=200, help="POD5 files the sequencer writes")
    demo.add_argument("--reads-per-file", type=int, default=10, help="reads in each file")
    demo.add_argument("--minutes", type=float, default=2.0, help="how long sequencing lasts")
    demo.add_argument("--engines", type=int, default=3, help="simulated GPU agents")
    demo.add_argument("--host", default="127.0.0.1", help="address of the manager")
    demo.add_argument("--port", type=int, default=40765, help="port of the manager")
    demo.set_defaults(func=run_demo)


def prepare(folder: Path) -> tuple[Path, Path]:
    """Fresh input and output folders; only a folder the demo made before is wiped."""
    if folder.exists():
        if not (folder / MARKER).exists() and any(folder.iterdir()):
            raise SystemExit(f"bcmanager demo: {folder} exists and was not made by the demo")
        shutil.rmtree(folder)
    input_dir, output_dir = folder / "input", folder / "output"
    input_dir.mkdir(parents=True)
    (folder / MARKER).touch()
    return input_dir, output_dir


def run_demo(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    input_dir, output_dir = prepare(args.folder)
    settings = Settings(
        input_dir=input_dir,
        output_dir=output_dir,
        host=args.host,
        port=args.port,
        default_batch_size=5,
        report_back_period=10,
        rescan_interval=5,
    )
    facility = Facility(settings, Manager(settings))
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, facility=facility),
            host=args.host,
            port=args.port,
            log_level="warning",
        )
    )
    # uvicorn hands the Ctrl-C it caught back to the handlers it found: let those be harmless, so
    # that shutting the demo down stays in our hands.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: None)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            print(f"bcmanager demo: the manager could not start on {args.host}:{args.port}")
            return 1
        await asyncio.sleep(0.05)
    url = f"http://{args.host}:{args.port}"
    interval = max(0.0, args.minutes * 60 / max(1, args.files) - 0.2)
    print(f"demo: manager serving {args.folder}; open {url}/ to watch the run")
    print(f"demo: simulated sequencer writing {args.files} POD5 files over {args.minutes} minutes")
    print(f"demo: {args.engines} simulated GPU agents; their logs are in {args.folder}/agents.log")
    sequencer = asyncio.create_task(
        run_sequencer(
            input_dir,
            files=args.files,
            reads_per_file=args.reads_per_file,
            interval=interval,
            write_seconds=0.2,
            samples_per_read=2000,
        )
    )
    agents = await start_agents(url, args.engines, args.folder / "agents.log")
    reporter = asyncio.create_task(report(facility, sequencer, args.files, url))
    await serving
    print("\ndemo: stopping the agents, the sequencer and the manager")
    reporter.cancel()
    sequencer.cancel()
    await stop_agents(agents)
    print("demo: stopped")
    return 0


def basecaller_words() -> list[str]:
    """The simulated basecaller as the agents run it: Dorado's output tree with barcodes, in
    BAM (Dorado's own default) where pysam is installed to write it, else in FASTQ."""
    reads_format = "bam" if importlib.util.find_spec("pysam") else "fastq"
    return [
        *(sys.executable, "-m", "bcmanager", "simulate", "basecaller"),
        *("--seconds-per-read", "0.05", "--format", reads_format),
        *("--layout", "dorado", "--barcodes", str(DEMO_BARCODES)),
    ]


async def start_agents(url: str, count: int, log: Path) -> list[asyncio.subprocess.Process]:
    basecaller = shlex.join(basecaller_words())
    agents = []
    with log.open("ab") as sink:
        for number in range(1, count + 1):
            agents.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bcmanager",
                    "agent",
                    "--manager",
                    url,
                    "--engine-id",
                    f"demo-gpu{number}",
                    "--command",
                    basecaller + " {input_dir} {output_dir}",
                    "--poll-interval",
                    "1",
                    stdout=sink,
                    stderr=sink,
                )
            )
    return agents


async def stop_agents(agents: list[asyncio.subprocess.Process]) -> None:
    """SIGTERM makes an agent give its batch back and exit; SIGKILL if it does not in time."""
    for agent in agents:
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
    for agent in agents:
        try:
            await asyncio.wait_for(agent.wait(), timeout=15)
        except TimeoutError:
            agent.kill()
            await agent.wait()


async def report(
    facility: Facility, sequencer: asyncio.Task[list[Path]], files: int, url: str
) -> None:
    """A progress line every few seconds, with the reads counted so far; when the run is
    complete, one closing message that says where its report is (once written, waited for a
    bounded time)."""
    while True:
        await asyncio.sleep(REPORT_EVERY)
        status = facility.status()
        counts = status.files
        shown = " · ".join(f"{state} {count}" for state, count in counts.model_dump().items())
        rate = status.rates.last_5_minutes.basecalled.files_per_minute
        line = f"{status.phase.value} | {shown} | {rate:.0f} files/min"
        [run] = status.runs
        if run.reads is not None and run.reads.reads:
            line += f" | reads {reads_summary(run.reads)}"
        print(f"[{status.uptime_seconds:5.0f}s] {line}", flush=True)
        done = counts.done + counts.failed == files
        if sequencer.done() and status.phase is RunPhase.COMPLETE and done:
            report_path = Path(run.output_dir) / REPORT_HTML
            loop = asyncio.get_running_loop()
            deadline = loop.time() + REPORT_WAIT
            while not report_path.exists() and loop.time() < deadline:
                await asyncio.sleep(0.2)
            missing = "" if report_path.exists() else f" (not written after {REPORT_WAIT:.0f}s)"
            # Read again: the report is written once every DONE job's reads are counted.
            reads = facility.status().runs[0].reads
            counted = "" if reads is None else f", reads {reads_summary(reads)}"
            print(
                f"demo: run complete: all {files} files basecalled in "
                f"{status.uptime_seconds:.0f}s{counted}. Report: {report_path}{missing}. The "
                f"manager stays up: watch it at {url}/, the API at {url}/docs; Ctrl-C stops it.",
                flush=True,
            )
            return
