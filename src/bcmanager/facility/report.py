"""The report of a completed run: ``report.json`` for programs and ``report.html`` for people,
written into the run's output folder.

``build_report`` takes what the manager knows at the end (the run's ``RunYield``, the raw files'
own read counts, the files done and quarantined, when the run started and ended) and returns
the report as JSON-able values; ``render_html`` draws it as one self-contained page (no script,
no font, no request: its charts are inline SVG, and a Content-Security-Policy forbids anything
else); ``write_report`` puts both in place, each complete or not at all. Everything that came
from disk (file and barcode names, models, reasons, paths) is escaped on the page.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from bcmanager.facility.yieldledger import HOUR, RunYield
from bcmanager.models import Histogram, RunYieldStatus, Shown, YieldSeries
from bcmanager.paths import REPORT_HTML, REPORT_JSON
from bcmanager.records import write_record
from bcmanager.words import account_warnings, human_bases

QUARANTINED_LISTED = 1000  # the page and report.json name at most this many quarantined files
BARCODES_CHARTED = 100
NONE = "n/a"  # a figure that does not exist yet (no reads, no timed job)


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A raw file set aside, and why (the last attempt's exit and stderr line, in words)."""

    file: str
    reason: str


class QuarantinedEntry(BaseModel):
    file: Shown
    reason: Shown


class ReadsIn(BaseModel):
    """The reads the sequencer wrote into the files that were basecalled, from the POD5 files'
    own read tables."""

    files: int = Field(description="Done files whose read count is known.")
    reads: int = Field(description="Reads in those files.")
    files_unknown: int = Field(description="Done files whose read count could not be read.")


class RunReport(BaseModel):
    """What ``report.json`` holds."""

    format: Literal["bcmanager-run-report"] = "bcmanager-run-report"
    version: Literal[1] = 1
    run: Shown = Field(description="The run's path (its name in a facility).")
    output_dir: Shown
    started_at: float = Field(description="Unix time the run started.")
    ended_at: float = Field(description="Unix time it completed.")
    started: str = Field(description="started_at, as an ISO 8601 time in UTC.")
    ended: str = Field(description="ended_at, as an ISO 8601 time in UTC.")
    duration_seconds: float
    generated_at: float
    reads_in: ReadsIn
    reads_out: int = Field(description="Reads in the basecalled files, pass and fail.")
    files_done: int
    files_quarantined: int
    quarantined: list[QuarantinedEntry] = Field(
        description=f"The quarantined files (the first {QUARANTINED_LISTED} by name)."
    )
    basecalled: RunYieldStatus
    warnings: list[str] = Field(description="What a person should look at, one line each.")


def build_report(
    *,
    run: str,
    output_dir: Path,
    ledger: RunYield,
    reads_in: Mapping[str, int | None],
    files_done: int,
    quarantined: Iterable[Quarantined],
    started_at: float,
    ended_at: float,
    generated_at: float,
) -> dict[str, Any]:
    """The report, as ``report.json`` holds it. ``reads_in`` maps each done raw file to its read
    count (None: unreadable); done files it does not name count as unknown too."""
    status = ledger.status()
    known = [count for count in reads_in.values() if count is not None]
    counted = ReadsIn(
        files=len(known), reads=sum(known), files_unknown=max(0, files_done - len(known))
    )
    aside = sorted(quarantined, key=lambda entry: entry.file)
    report = RunReport(
        run=run,
        output_dir=str(output_dir),
        started_at=started_at,
        ended_at=ended_at,
        started=_iso(started_at),
        ended=_iso(ended_at),
        duration_seconds=round(max(0.0, ended_at - started_at), 1),
        generated_at=generated_at,
        reads_in=counted,
        reads_out=status.reads,
        files_done=files_done,
        files_quarantined=len(aside),
        quarantined=[
            QuarantinedEntry(file=entry.file, reason=entry.reason)
            for entry in aside[:QUARANTINED_LISTED]
        ],
        basecalled=status,
        warnings=_warnings(status, counted, len(aside)),
    )
    return report.model_dump(mode="json")


def _warnings(status: RunYieldStatus, reads_in: ReadsIn, quarantined: int) -> list[str]:
    found = account_warnings(status.account)
    if status.mixed_models:
        found.append(
            f"basecalled with {len(status.models)} models ({', '.join(status.models)}): "
            "its reads are not all alike"
        )
    if status.jobs_without_stats:
        found.append(
            f"{status.jobs_without_stats} done jobs left no readable statistics: "
            "their reads are missing from every number here"
        )
    if status.files_unreadable:
        found.append(f"{status.files_unreadable} reads files could not be read by their agents")
    if reads_in.files_unknown:
        found.append(f"{reads_in.files_unknown} done raw files' read counts are unknown")
    elif (
        not _accounted(status)
        and not status.jobs_without_stats
        and (reads_in.reads != status.reads)
    ):
        # Without an account of every job, the records are all there is to compare with.
        found.append(
            f"reads out ({status.reads:,}) differ from reads in ({reads_in.reads:,}) by "
            f"{status.reads - reads_in.reads:+,}"
        )
    if quarantined:
        found.append(f"{quarantined} raw files were quarantined and not basecalled")
    return found


def _accounted(status: RunYieldStatus) -> bool:
    """Whether every done job of the run has an account of its reads (which says exactly what
    did not come out, split reads counted through their parents)."""
    return status.account.jobs_without_account == 0 and status.account.records_out > 0


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def write_report(folder: Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``folder``, each whole
    (``records.write_record``). Returns their paths."""
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    write_record(folder, REPORT_JSON, text)
    write_record(folder, REPORT_HTML, render_html(report), durable_name=True)
    return folder / REPORT_JSON, folder / REPORT_HTML


# -- the page ---------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#1d2430;
padding:0 1em}
h1{font-size:1.6em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.8em 0 .5em}
.sub{color:#5b6473;margin:0 0 1.2em;word-break:break-all}
.tiles{display:flex;flex-wrap:wrap;gap:.8em}
.tile{border:1px solid #d5dae2;border-radius:6px;padding:.6em .9em;min-width:9em}
.tile b{display:block;font-size:1.5em}.tile span{color:#5b6473}
.warn{background:#fff4d6;border:1px solid #e5b53e;border-radius:6px;padding:.6em 1em}
.warn li{margin:.2em 0}.alert{background:#fde2e1;border-color:#d9534f;font-weight:600}
table{border-collapse:collapse;margin:.4em 0}td,th{padding:.25em .8em;text-align:right;
border-bottom:1px solid #e6e9ee}th{background:#f4f6f9}td:first-child,th:first-child{text-align:left;
word-break:break-all}
svg{display:block;max-width:100%;height:auto;background:#fafbfc;border:1px solid #e6e9ee}
svg text{font:11px system-ui,sans-serif;fill:#5b6473}.bar{fill:#3b7dd8}.fail{fill:#d98c3b}
.mark{stroke:#c0392b;stroke-width:1.5}
"""
_WIDTH, _HEIGHT, _LEFT, _BOTTOM = 900, 220, 70, 30


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page."""
    data = RunReport.model_validate(report)
    out = data.basecalled
    parts = [
        *_head(data),
        *_reads(data),
        *_charts(out),
        *_barcodes(out),
        *_tools(out),
        *_tail(data),
    ]
    return "\n".join(parts)


def _head(data: RunReport) -> list[str]:
    """The page's head, its title, warnings and headline figures."""
    out = data.basecalled
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Run report: {_e(data.run)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Run report: {_e(data.run)}</h1>",
        f'<p class="sub">{_e(data.output_dir)} · {_e(data.started)} to {_e(data.ended)} '
        f"({_e(_duration(data.duration_seconds))})</p>",
    ]
    if data.warnings:
        alert = " alert" if out.mixed_models else ""
        parts.append(f'<ul class="warn{alert}" id="warnings">')
        parts.extend(f"<li>{_e(line)}</li>" for line in data.warnings)
        parts.append("</ul>")
    parts.append('<div class="tiles" id="headline">')
    for label, value in (
        ("reads", _count(out.reads)),
        ("bases", human_bases(out.bases)),
        ("N50", human_bases(out.n50) if out.n50 is not None else NONE),
        ("mean Q", f"{out.mean_q:.2f}" if out.mean_q is not None else NONE),
        ("pass", f"{out.pass_fraction:.1%}" if out.pass_fraction is not None else NONE),
        ("duration", _duration(data.duration_seconds)),
    ):
        parts.append(f'<div class="tile"><b>{_e(value)}</b><span>{_e(label)}</span></div>')
    parts.append("</div>")
    return parts


def _reads(data: RunReport) -> list[str]:
    """The reads, pass and fail, and the account of every raw read."""
    out = data.basecalled
    parts: list[str] = []
    parts.append("<h2>Reads</h2>")
    parts.append(
        _table(
            ("", "reads", "bases"),
            [
                ("pass", _count(out.pass_reads), _count(out.pass_bases)),
                ("fail", _count(out.fail_reads), _count(out.fail_bases)),
                ("all", _count(out.reads), _count(out.bases)),
                ("in the raw files basecalled", _count(data.reads_in.reads), ""),
            ],
            "reads",
        )
    )
    account = out.account
    parts.append("<h2>Every read accounted for</h2>")
    parts.append(
        _table(
            ("", "count"),
            [
                ("raw reads in the done files", _count(account.reads_in)),
                ("records out, merged", _count(account.records_out)),
                ("raw reads split into several records", _count(account.split_reads)),
                ("raw reads missing", _count(account.reads_missing)),
                ("files rejected (went to the failure policy)", _count(account.files_rejected)),
            ],
            "account",
        )
    )
    if account.rejections:
        parts.append('<ul id="rejections">')
        parts.extend(f"<li>{_e(line)}</li>" for line in account.rejections)
        parts.append("</ul>")
    parts.append(
        f"<p>N50 is given to {_e(human_bases(out.n50_resolution))} (the length histogram's bins); "
        f"{_count(data.files_done)} raw files done, {_count(data.files_quarantined)} "
        f"quarantined; {_count(out.jobs)} jobs.</p>"
    )
    return parts


def _charts(out: RunYieldStatus) -> list[str]:
    """Yield over time, read length and Q-score histograms."""
    parts: list[str] = []
    parts.append("<h2>Yield over time</h2>")
    parts.append(_yield_chart(out.yield_over_time))
    parts.append("<h2>Read length</h2>")
    parts.append(_histogram_chart(out.length_histogram, "read length", human_bases, out.n50))
    parts.append("<h2>Mean Q-score</h2>")
    parts.append(_histogram_chart(out.q_histogram, "mean Q", str, None))
    parts.append("<h2>Barcodes</h2>")
    parts.append(_barcode_chart(out))
    parts.append('<p class="sub">Reads that passed in blue, those that failed in orange.</p>')
    return parts


def _barcodes(out: RunYieldStatus) -> list[str]:
    """The barcodes, charted and tabled."""
    parts: list[str] = []
    rows = [
        (
            barcode.barcode if barcode.barcode is not None else "no barcode",
            _count(barcode.reads),
            human_bases(barcode.bases),
            f"{barcode.pass_reads / barcode.reads:.1%}" if barcode.reads else NONE,
            f"{barcode.mean_q:.2f}" if barcode.mean_q is not None else NONE,
        )
        for barcode in out.barcodes
    ]
    if out.more_barcodes is not None:
        more = out.more_barcodes
        rows.append(("(more barcodes)", _count(more.reads), human_bases(more.bases), "", ""))
    parts.append(_table(("barcode", "reads", "bases", "pass", "mean Q"), rows, "barcodes"))
    return parts


def _tools(out: RunYieldStatus) -> list[str]:
    """The basecallers and engines that made the reads."""
    parts: list[str] = []
    parts.append("<h2>Basecallers</h2>")
    parts.append(
        _table(
            ("basecaller", "version", "model", "jobs"),
            [
                (use.name or "unknown", use.version or "", use.model or "unknown", str(use.jobs))
                for use in out.basecallers
            ],
            "basecallers",
        )
    )
    parts.append("<h2>Engines</h2>")
    parts.append(
        _table(
            ("engine", "jobs", "reads", "bases", "busy", "bases per hour"),
            [
                (
                    engine.engine,
                    _count(engine.jobs),
                    _count(engine.reads),
                    human_bases(engine.bases),
                    _duration(engine.busy_seconds),
                    human_bases(round(engine.bases_per_hour))
                    if engine.bases_per_hour is not None
                    else NONE,
                )
                for engine in out.engines
            ],
            "engines",
        )
    )
    return parts


def _tail(data: RunReport) -> list[str]:
    """Quarantined files, statistics not counted, and when the page was made."""
    out = data.basecalled
    parts: list[str] = []
    if data.quarantined:
        parts.append("<h2>Quarantined files</h2>")
        parts.append(
            _table(
                ("file", "reason"),
                [(entry.file, entry.reason) for entry in data.quarantined],
                "quarantined",
            )
        )
    if out.problems:
        parts.append("<h2>Statistics not counted</h2><ul>")
        parts.extend(f"<li>{_e(line)}</li>" for line in out.problems)
        parts.append("</ul>")
    parts.append(f'<p class="sub">Generated {_e(_iso(data.generated_at))} by bcmanager.</p>')
    parts.append("</body></html>\n")
    return parts


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _count(value: int) -> str:
    return f"{value:,}"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{seconds:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], name: str) -> str:
    cells = [f'<table id="{_e(name)}"><tr>', *(f"<th>{_e(text)}</th>" for text in head)]
    cells.append("</tr>")
    for row in rows:
        cells.append("<tr>")
        cells.extend(f"<td>{_e(text)}</td>" for text in row)
        cells.append("</tr>")
    cells.append("</table>")
    return "".join(cells)


def _svg(name: str, body: list[str], height: int = _HEIGHT) -> str:
    return (
        f'<svg id="{_e(name)}" viewBox="0 0 {_WIDTH} {height}" width="{_WIDTH}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg" role="img">'
        + "".join(body)
        + "</svg>"
    )


def _text(x: float, y: float, text: str, anchor: str = "middle") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{_e(text)}</text>'


def _bars(name: str, values: Sequence[int], labels: Sequence[str], top_label: str) -> list[str]:
    """Vertical bars over the chart's width, the highest reaching the top, with a label under
    every few bars and the top value at the left."""
    body: list[str] = []
    highest = max(values, default=0)
    plot_width, plot_height = _WIDTH - _LEFT - 10, _HEIGHT - _BOTTOM - 10
    if not values or highest <= 0:
        body.append(_text(_WIDTH / 2, _HEIGHT / 2, f"no {name} yet"))
        return body
    step = plot_width / len(values)
    every = max(1, round(len(values) / 10))
    for index, value in enumerate(values):
        height = plot_height * value / highest
        x = _LEFT + index * step
        body.append(
            f'<rect class="bar" x="{x:.1f}" y="{10 + plot_height - height:.1f}" '
            f'width="{max(step - 1, 0.5):.1f}" height="{height:.1f}"></rect>'
        )
        if index % every == 0:
            body.append(_text(x + step / 2, _HEIGHT - 12, labels[index]))
    body.append(_text(_LEFT - 6, 18, top_label, "end"))
    body.append(_text(_LEFT - 6, 10 + plot_height, "0", "end"))
    return body


def _yield_chart(series: YieldSeries) -> str:
    per_hour = [round(bases * HOUR / series.bucket_seconds) for bases in series.bases]
    start = series.start or 0.0
    labels = [
        datetime.fromtimestamp(start + index * series.bucket_seconds, UTC).strftime("%d %H:%M")
        for index in range(len(per_hour))
    ]
    body = _bars("yield", per_hour, labels, f"{human_bases(max(per_hour, default=0))}/h")
    return _svg("yield-chart", body)


def _histogram_chart(
    histogram: Histogram, name: str, label: Callable[[int], str], mark: int | None
) -> str:
    values = list(histogram.counts)
    labels = [label(index * histogram.bin_width) for index in range(len(values))]
    if histogram.beyond:
        values.append(histogram.beyond)
        labels.append(f"≥{label(len(histogram.counts) * histogram.bin_width)}")
    body = _bars(name, values, labels, _count(max(values, default=0)))
    if mark is not None and values:
        step = (_WIDTH - _LEFT - 10) / len(values)
        x = _LEFT + min(mark / histogram.bin_width, len(values)) * step
        body.append(
            f'<line class="mark" x1="{x:.1f}" y1="10" x2="{x:.1f}" y2="{_HEIGHT - _BOTTOM}"></line>'
        )
        body.append(_text(x + 4, 22, f"N50 {label(mark)}", "start"))
    return _svg(f"{name.replace(' ', '-')}-chart", body)


def _barcode_chart(out: RunYieldStatus) -> str:
    """One horizontal bar per barcode, pass then fail, the most reads first."""
    shown_codes = sorted(out.barcodes, key=lambda item: -item.reads)[:BARCODES_CHARTED]
    row, left = 18, 180
    height = max(40, row * len(shown_codes) + 20)
    most = max((item.reads for item in shown_codes), default=0)
    body: list[str] = []
    if not most:
        body.append(_text(_WIDTH / 2, height / 2, "no reads yet"))
    for index, item in enumerate(shown_codes):
        y = 10 + index * row
        scale = (_WIDTH - left - 90) / most if most else 0
        passed, failed = item.pass_reads * scale, (item.reads - item.pass_reads) * scale
        name = item.barcode if item.barcode is not None else "no barcode"
        body.append(_text(left - 6, y + 12, name, "end"))
        body.append(
            f'<rect class="bar" x="{left}" y="{y}" width="{passed:.1f}" height="{row - 4}">'
            "</rect>"
            f'<rect class="fail" x="{left + passed:.1f}" y="{y}" width="{failed:.1f}" '
            f'height="{row - 4}"></rect>'
        )
        body.append(_text(left + passed + failed + 6, y + 12, _count(item.reads), "start"))
    return _svg("barcode-chart", body, height)
