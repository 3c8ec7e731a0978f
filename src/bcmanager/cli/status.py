"""``bcmanager status``: the run's snapshot in a terminal, printed once or refreshed in place.

It reads GET /status of a running manager, the same snapshot the page at / shows: the runs
(when INPUT_DIR holds more than one, with their reads and bases), progress, files and bytes by
state, the sequencer's rate beside the basecalling rate, ETA, the reads of the run shown (when
one is), engines, and the jobs that failed or lost their lease; with ``--run``, that run's own
snapshot (GET /status?run=PATH). It sends ``BCM_READ_TOKEN`` (else
``BCM_OPERATOR_TOKEN``) when set, and verifies an https manager against ``BCM_CA_FILE`` (else
the system's CAs).
"""

from __future__ import annotations

import argparse
import ssl
import time
from pathlib import Path

import httpx
from pydantic import ValidationError
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from bcmanager.models import ReadTally, RunEntry, RunPhase, RunStatus, RunYieldStatus
from bcmanager.paths import REPORT_HTML
from bcmanager.settings import ClientSettings
from bcmanager.urls import base_url
from bcmanager.words import account_line, account_warnings, human_bases

DEFAULT_URL = "http://127.0.0.1:40765"
STATE_STYLES = {
    "done": "green",
    "leased": "blue",
    "pending": "white",
    "waiting": "bright_black",
    "failed": "red",
}
PHASE_STYLES = {
    RunPhase.SEQUENCING: "bold white on blue",
    RunPhase.BASECALLING: "bold black on yellow",
    RunPhase.COMPLETE: "bold white on green",
}
BARCODES_LISTED = 24  # barcode lines in the terminal; the rest are summed in one


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show a running manager's progress, rates, ETA and engines",
        description="Show the run's snapshot from a running manager's /status. Sends "
        "BCM_READ_TOKEN (else BCM_OPERATOR_TOKEN) when set; BCM_CA_FILE verifies an https "
        "manager.",
    )
    parser.add_argument(
        "--url",
        "--manager",
        default=DEFAULT_URL,
        help="the manager's address: HOST:PORT, or a URL, even one ending in /status "
        f"(default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--run",
        help="show this run alone: its path relative to INPUT_DIR, as the runs table names it "
        "(default: every run together)",
    )
    parser.add_argument(
        "--watch", action="store_true", help="refresh in place until Ctrl-C (default: once)"
    )
    parser.add_argument(
        "--ca-file",
        help="the CA that signed an https manager's certificate (default: BCM_CA_FILE, else "
        "the system's CAs)",
    )
    parser.add_argument(
        "--interval", type=float, default=2.0, help="seconds between refreshes (default 2)"
    )
    parser.set_defaults(func=run_status)


def run_status(args: argparse.Namespace) -> int:
    console = Console()
    url = base_url(args.url)
    try:
        settings = ClientSettings(**({"ca_file": args.ca_file} if args.ca_file else {}))
        verify = settings.verify()
    except (ValidationError, OSError, ssl.SSLError) as error:
        console.print(f"bcmanager status: cannot use the CA file: {error}", style="red")
        return 2
    headers = settings.bearer("read_token", "operator_token")
    with httpx.Client(timeout=10, verify=verify, headers=headers) as client:
        if not args.watch:
            try:
                console.print(render(fetch(client, url, args.run)))
            except httpx.HTTPError as error:
                console.print(f"bcmanager: no status from {url}: {_refusal(error)}", style="red")
                return 1
            return 0
        try:
            with Live(console=console, auto_refresh=False) as live:
                while True:
                    live.update(_frame(client, url, args.run), refresh=True)
                    time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


def fetch(client: httpx.Client, url: str, run: str | None = None) -> RunStatus:
    """Every run's snapshot, or run ``run``'s own."""
    reply = client.get(f"{url}/status", params={} if run is None else {"run": run})
    reply.raise_for_status()
    return RunStatus.model_validate_json(reply.content)


def _frame(client: httpx.Client, url: str, run: str | None) -> RenderableType:
    try:
        return render(fetch(client, url, run))
    except httpx.HTTPError as error:
        return Text(f"No status from {url} ({_refusal(error)}); retrying…", style="bold red")


def _refusal(error: httpx.HTTPError) -> str:
    """What went wrong, in the manager's words when it answered (a run it does not know)."""
    if isinstance(error, httpx.HTTPStatusError):
        try:
            detail = error.response.json()["detail"]
        except (ValueError, KeyError, TypeError):
            detail = None
        if isinstance(detail, str):
            return f"{error.response.status_code}: {detail}"
    return str(error)


# How each bad end of a job is shown, and its colour.
OUTCOME_WORDS = {
    "FAILED": ("failed, retried", "yellow"),
    "QUARANTINED": ("quarantined", "red"),
    "EXPIRED": ("lease expired", "yellow"),
    "EMPTY": ("no output", "yellow"),
}


def render(status: RunStatus) -> RenderableType:
    """The whole snapshot, top to bottom, as the page lays it out."""
    parts: list[RenderableType] = [_header(status)]
    if len(status.runs) > 1:
        parts.append(_runs(status.runs))
    parts += [_progress(status), _states_and_rates(status)]
    parts.append(_outlook(status))
    if len(status.runs) == 1 and status.runs[0].reads is not None:
        parts.append(_reads(status.runs[0], status.runs[0].reads))
    parts.append(_engines(status))
    if status.recent_problems:
        parts.append(_problems(status))
    parts.extend(
        Text(f"benched: {engine.engine}: {engine.reason}", style="yellow")
        for engine in status.benched
    )
    if status.quarantined:
        shown = ", ".join(item.file for item in status.quarantined)
        parts.append(
            Text(f"quarantined ({status.files.failed}): {shown}; `bcmanager retry` sends them back")
        )
    parts.extend(Text(f"! {line}", style="red") for line in status.job_problems)
    return Group(*parts)


def _header(status: RunStatus) -> Text:
    title = Text.assemble(("bcmanager ", "bold"), (status.input_dir, "dim"), "  ")
    title.append_text(phase_badge(status.phase, status.files.failed))
    if not status.ready:
        title.append("  scanning…", style="yellow")
    elif status.phase is not RunPhase.COMPLETE:
        keeping_up = status.drain.keeping_up
        title.append("  ")
        title.append(
            " keeping up " if keeping_up else " falling behind ",
            style="bold white on green" if keeping_up else "bold white on red",
        )
    return title


def _runs(runs: list[RunEntry]) -> Table:
    """One line per run, compact: `--run PATH` shows one run's own snapshot."""
    table = Table(
        title="Runs", title_justify="left", caption="bcmanager status --run PATH: one run"
    )
    table.add_column("Run", overflow="fold")
    table.add_column("Phase")
    table.add_column("Prio", justify="right")
    for heading in ("Pending", "Leased", "Done", "Quar.", "Lag", "Rate/min", "ETA", "Reads"):
        table.add_column(heading, justify="right")
    table.add_column("Bases", justify="right")
    table.add_column("Model")
    for run in runs:
        files = run.files
        phase = phase_badge(run.phase, files.failed)
        if run.paused:
            phase.append(" paused", style="bold yellow")
        table.add_row(
            Text(run.path),
            phase,
            str(run.priority),
            f"{files.pending:,}",
            f"{files.leased:,}",
            f"{files.done:,}",
            Text(f"{files.failed:,}", style="red" if files.failed else ""),
            "-" if run.lag_seconds is None else human_duration(run.lag_seconds),
            _rate(run.basecalled.files_per_minute),
            "-" if run.eta_seconds is None else human_duration(run.eta_seconds),
            "-" if run.reads is None else f"{run.reads.reads:,}",
            "-" if run.reads is None else human_bases(run.reads.bases),
            _model(run),
        )
    return table


def _model(run: RunEntry) -> Text:
    """The model its settings name; reads from two models are not one data set: said in red."""
    if run.reads is not None and run.reads.mixed_models:
        return Text(f"{len(run.reads.models)} models", style="bold red")
    return Text(run.model or "-")


def _reads(run: RunEntry, reads: RunYieldStatus) -> RenderableType:
    """The run's reads: a line of headline numbers, what needs a look, where its report is once
    it is complete, and a compact table when its reads carry barcodes."""
    jobs = f"{reads.jobs:,} job" if reads.jobs == 1 else f"{reads.jobs:,} jobs"
    parts: list[RenderableType] = [
        Text.assemble(("Reads ", "bold"), reads_summary(reads), (f"  (from {jobs})", "dim"))
    ]
    if reads.mixed_models:
        parts.append(
            Text(
                f"basecalled with {len(reads.models)} models ({', '.join(reads.models)}): "
                "its reads are not all alike",
                style="bold white on red",
            )
        )
    parts.append(Text.assemble(("Account ", "bold"), account_line(reads.account)))
    parts.extend(Text(line, style="yellow") for line in account_warnings(reads.account))
    if reads.jobs_without_stats:
        parts.append(
            Text(
                f"{reads.jobs_without_stats:,} done jobs left no readable statistics: their "
                "reads are missing from these numbers",
                style="yellow",
            )
        )
    if reads.files_unreadable:
        parts.append(
            Text(
                f"{reads.files_unreadable:,} reads files could not be read by their agents",
                style="yellow",
            )
        )
    if run.phase is RunPhase.COMPLETE:
        parts.append(Text(f"report: {Path(run.output_dir) / REPORT_HTML}"))
    if reads.more_barcodes is not None or any(b.barcode is not None for b in reads.barcodes):
        parts.append(_barcodes(reads))
    return Group(*parts)


def reads_summary(reads: RunYieldStatus) -> str:
    """A run's reads in one line: reads, bases, N50, mean Q and the share that passed."""
    n50 = "-" if reads.n50 is None else f"{reads.n50:,}"
    mean_q = "-" if reads.mean_q is None else f"{reads.mean_q:.1f}"
    passed = "-" if reads.pass_fraction is None else f"{reads.pass_fraction:.1%}"
    return (
        f"{reads.reads:,} · {human_bases(reads.bases)} · N50 {n50} · mean Q {mean_q} · "
        f"{passed} pass"
    )


def _barcodes(reads: RunYieldStatus) -> Table:
    table = Table(title="Barcodes", title_justify="left")
    table.add_column("Barcode")
    for heading in ("Reads", "Bases", "Pass", "Mean Q"):
        table.add_column(heading, justify="right")
    rows: list[tuple[str, ReadTally]] = [
        (barcode.barcode or "no barcode", barcode) for barcode in reads.barcodes
    ]
    if reads.more_barcodes is not None:
        rows.append(("(more barcodes)", reads.more_barcodes))
    if len(rows) > BARCODES_LISTED:
        rest = rows[BARCODES_LISTED - 1 :]
        rows[BARCODES_LISTED - 1 :] = [(f"({len(rest)} more)", _summed_tallies(rest))]
    for name, tally in rows:
        table.add_row(
            Text(name, style="dim" if name == "no barcode" else ""),
            f"{tally.reads:,}",
            human_bases(tally.bases),
            f"{tally.pass_reads / tally.reads:.1%}" if tally.reads else "-",
            "-" if tally.mean_q is None else f"{tally.mean_q:.1f}",
        )
    return table


def _summed_tallies(rows: list[tuple[str, ReadTally]]) -> ReadTally:
    """The barcodes beyond those listed, in one line (their mean Q weighted by reads)."""
    reads = sum(tally.reads for _, tally in rows)
    q_sum = sum(tally.mean_q * tally.reads for _, tally in rows if tally.mean_q is not None)
    return ReadTally(
        reads=reads,
        bases=sum(tally.bases for _, tally in rows),
        pass_reads=sum(tally.pass_reads for _, tally in rows),
        pass_bases=sum(tally.pass_bases for _, tally in rows),
        mean_q=round(q_sum / reads, 2) if reads else None,
    )


def phase_badge(phase: RunPhase, quarantined: int) -> Text:
    """The phase as a coloured label; a run complete with quarantined files is amber, not
    green: files were set aside and need an operator."""
    if phase is RunPhase.COMPLETE and quarantined:
        return Text(f" complete, {quarantined} quarantined ", style="bold black on yellow")
    return Text(f" {phase.value} ", style=PHASE_STYLES[phase])


def _progress(status: RunStatus) -> Table:
    files, sizes = status.files, status.bytes
    total = files.waiting + files.pending + files.leased + files.done + files.failed
    total_bytes = sizes.waiting + sizes.pending + sizes.leased + sizes.done + sizes.failed
    share = files.done / total if total else 0.0
    line = Table.grid(padding=(0, 2))
    line.add_row(
        ProgressBar(total=max(total, 1), completed=files.done, width=50),
        Text(f"{share:.1%}", style="bold"),
        f"{files.done:,} of {plural_files(total)} basecalled · "
        f"{human_bytes(sizes.done)} of {human_bytes(total_bytes)}",
    )
    return line


def _states_and_rates(status: RunStatus) -> Table:
    states = Table(title="Files", title_justify="left", expand=False)
    states.add_column("State")
    states.add_column("Files", justify="right")
    states.add_column("Bytes", justify="right")
    counts, sizes = status.files.model_dump(), status.bytes.model_dump()
    for state, style in STATE_STYLES.items():
        states.add_row(Text(state, style=style), f"{counts[state]:,}", human_bytes(sizes[state]))
    rates = Table(title="Per minute", title_justify="left")
    rates.add_column("")
    rates.add_column("5 min", justify="right")
    rates.add_column("60 min", justify="right")
    short, hour = status.rates.last_5_minutes, status.rates.last_60_minutes
    for label, name in (("sequencer", "arrived"), ("basecalling", "basecalled")):
        now, longer = getattr(short, name), getattr(hour, name)
        rates.add_row(f"{label} files", _rate(now.files_per_minute), _rate(longer.files_per_minute))
        rates.add_row(
            f"{label} bytes",
            human_bytes(now.bytes_per_minute),
            human_bytes(longer.bytes_per_minute),
        )
    side_by_side = Table.grid(padding=(0, 4))
    side_by_side.add_row(states, rates)
    return side_by_side


def _outlook(status: RunStatus) -> Text:
    drain = status.drain
    if status.phase is RunPhase.COMPLETE and status.files.failed:
        return Text(
            f"Basecalling complete; {plural_files(status.files.failed)} quarantined: "
            "`bcmanager retry` sends them back.",
            style="bold yellow",
        )
    if status.phase is RunPhase.COMPLETE:
        return Text("Basecalling complete.", style="bold green")
    label = (
        "Basecalling done in" if status.phase is RunPhase.BASECALLING else "Backlog basecalled in"
    )
    eta = "-" if drain.eta_seconds is None else human_duration(drain.eta_seconds)
    text = Text.assemble(f"{label} ", (eta, "bold"))
    text.append(f"  ({plural_files(drain.backlog_files)}, {human_bytes(drain.backlog_bytes)} to go")
    if not drain.keeping_up and drain.growth_files_per_minute > 0:
        text.append(f"; growing by {_rate(drain.growth_files_per_minute)} files/min")
    text.append(")")
    return text


def _engines(status: RunStatus) -> Table:
    table = Table(title="Engines", title_justify="left")
    for heading in ("Engine", "Current job"):
        table.add_column(heading)
    for heading in ("Jobs done", "Files done", "s / file", "Failed", "Expired", "Released"):
        table.add_column(heading, justify="right")
    table.add_column("Last contact", justify="right")
    for engine in status.engines:
        mean = engine.mean_seconds_per_file
        table.add_row(
            engine.engine,
            ", ".join(map(short_job, engine.current_jobs)) or Text("idle", style="dim"),
            f"{engine.jobs_done:,}",
            f"{engine.files_done:,}",
            "-" if mean is None else f"{mean:.1f}",
            Text(str(engine.jobs_failed), style="red" if engine.jobs_failed else ""),
            Text(str(engine.jobs_expired), style="yellow" if engine.jobs_expired else ""),
            str(engine.jobs_released),
            f"{human_duration(engine.seconds_since_contact)} ago",
        )
    retired = status.retired_engines
    if retired.engines:
        # One row sums the engines no longer listed, so the columns add up to the run's totals.
        mean = retired.mean_seconds_per_file
        table.add_row(
            Text(f"{retired.engines:,} retired", style="dim"),
            Text("-", style="dim"),
            f"{retired.jobs_done:,}",
            f"{retired.files_done:,}",
            "-" if mean is None else f"{mean:.1f}",
            Text(f"{retired.jobs_failed:,}", style="red" if retired.jobs_failed else ""),
            Text(f"{retired.jobs_expired:,}", style="yellow" if retired.jobs_expired else ""),
            f"{retired.jobs_released:,}",
            Text("-", style="dim"),
        )
        table.caption = (
            f"Retired: engines idle for {human_duration(retired.idle_seconds)}, or beyond the "
            f"{retired.idle_listed:,} idle ones active last; their work is summed in one row."
        )
    elif not status.engines:
        table.caption = "No engine has asked for work yet."
    return table


def _problems(status: RunStatus) -> Table:
    table = Table(title="Failed, expired and empty jobs", title_justify="left")
    table.add_column("Job")
    table.add_column("Engine")
    table.add_column("Outcome")
    table.add_column("Files", justify="right")
    table.add_column("When", justify="right")
    table.add_column("Why")
    for job in status.recent_problems:
        word, style = OUTCOME_WORDS[job.outcome]
        when = (
            "before restart"
            if job.seconds_ago is None
            else f"{human_duration(job.seconds_ago)} ago"
        )
        table.add_row(
            short_job(job.jobid),
            job.engine,
            Text(word, style=style),
            str(job.files),
            when,
            _why(job.exit_code, job.signal, job.last_line),
        )
    return table


def _why(exit_code: int | None, signal: str | None, last_line: str | None) -> str:
    """What the agent recorded of a failure, in a few words."""
    how = f"killed by {signal}" if signal else f"exit {exit_code}" if exit_code is not None else ""
    return ": ".join(part for part in (how, last_line) if part)


def plural_files(count: int) -> str:
    return f"{count:,} file" if count == 1 else f"{count:,} files"


def short_job(jobid: str) -> str:
    """The last digits of a job id: enough to tell jobs apart and to find their folders."""
    return jobid if len(jobid) <= 10 else f"…{jobid[-8:]}"


def _rate(per_minute: float) -> str:
    return f"{per_minute:.1f}" if per_minute < 10 else f"{per_minute:,.0f}"


def human_bytes(count: float) -> str:
    """Decimal units, as disk and sequencer vendors count them."""
    value, unit = float(count), "B"
    for bigger in ("kB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
