"""A run's yield: reads, bases, pass and fail, quality, read lengths, per barcode, per engine and
over time, folded job by job from the statistics each agent writes after its basecaller
(``paths.STATS_FILE``, documented in docs/report.md).

``RunYield`` is sans-IO: the caller gives it each DONE job's ``JobStats`` with the wall time the
job ended, and takes a snapshot (``status``) or a record (``to_record``) whenever it likes. Two
functions at the bottom are the I/O edge: ``read_job_stats`` reads one file, ``rebuild_yield``
reads a run's log folders back after a restart.

The file is written by an engine, so it is untrusted: at most ``STATS_MAX`` bytes are read, it is
validated (histograms must count the group's reads, bases must fit the length bins), and anything
wrong makes a one-line reason instead of an exception. Memory stays bounded whatever the files
say: histograms hold at most a fixed number of bins (a wider bin when there would be more),
barcodes, basecallers and engines beyond a fixed number are summed together, and only the last
few problems are kept.
"""

from __future__ import annotations

import math
import os
import stat
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from bcmanager.core.scan import attempt_record
from bcmanager.models import (
    BarcodeYield,
    BasecallerUse,
    EngineYield,
    Histogram,
    ReadsAccount,
    ReadTally,
    RunYieldStatus,
    YieldSeries,
)
from bcmanager.paths import (
    ACCOUNT_FILE,
    ATTEMPT_FILE,
    STATS_FILE,
    FolderKind,
    parse_job_folder,
    shown,
)

STATS_MAX = 1 << 20  # an engine writes it: read no more than this
Q_MAX = 100  # no read's mean Q-score is above it (phred scores in FASTQ stop at 93)
COUNT_MAX = 10**15  # more reads or bases than a job can hold: a bad file
LENGTH_BIN_MAX = 1_000_000
GROUPS_MAX = 1024  # (barcode, pass) pairs: 384 barcodes, unclassified and mixed, pass and fail
LABEL_MAX = 200  # a barcode, basecaller name, version or model
# Histograms: at most this many bins; a run whose reads would need more gets wider bins. 1000
# bins of 100 bases cover reads up to 100 kb at full resolution; the rare longer read takes one
# bin of its own, so ultra-long reads widen the bins only when there are very many of them.
LENGTH_BINS = 1000
Q_BINS = Q_MAX + 1
# Bin widths grow to a common multiple of the jobs' widths, so that re-binning stays exact;
# beyond these, a job's bins are put in the run's bin holding their start (approximate).
LENGTH_WIDEST = 100_000
Q_WIDEST = 10
HOUR = 3600
YIELD_BUCKETS = 400  # an hour each: 16 days of a run; a longer one gets wider buckets
BARCODES_MAX = 512
BASECALLERS_MAX = 16
ENGINES_MAX = 128
OTHER_ENGINES = "(others)"  # never an engine id: those are letters, digits, '.', '-', '_'
PROBLEMS_KEPT = 10
REASON_MAX = 300
# The snapshots: a length chart shows reads up to the length all but this share of reads stay
# under, in at most DISPLAY_BARS bars, and the rest in one sum.
LENGTH_TAIL = 0.005
DISPLAY_BARS = 100

_M = TypeVar("_M", bound=BaseModel)
Label = Annotated[str, StringConstraints(max_length=LABEL_MAX), AfterValidator(shown)]
Count = Annotated[int, Field(ge=0, le=COUNT_MAX)]


class Basecaller(BaseModel):
    """Which basecaller made a job's reads; each field null when the agent could not tell."""

    model_config = ConfigDict(frozen=True)

    name: Label | None = None
    version: Label | None = None
    model: Label | None = None


class ReadGroup(BaseModel):
    """A job's reads of one barcode (or none) that passed, or failed."""

    barcode: Label | None
    passed: bool = Field(alias="pass")
    reads: Count
    bases: Count
    qscore_sum: float = Field(ge=0, allow_inf_nan=False)
    length_hist: dict[Annotated[int, Field(ge=0, le=COUNT_MAX)], Count]
    q_hist: dict[Annotated[int, Field(ge=0, le=Q_MAX)], Count]


class ReadsFile(BaseModel):
    path: Annotated[str, StringConstraints(max_length=4096), AfterValidator(shown)]
    reads: Count | None = None
    error: Annotated[str, AfterValidator(shown)] | None = None


class JobStats(BaseModel):
    """One job's ``bcm-stats.json``, checked: every group's histograms count its reads, its
    bases fit its length bins, its Q-score sum fits its reads. Unknown keys are ignored."""

    format: Literal["bcmanager-job-stats"]
    version: Literal[1]
    basecaller: Basecaller = Basecaller()
    length_bin: int = Field(gt=0, le=LENGTH_BIN_MAX)
    q_bin: int = Field(gt=0, le=Q_MAX)
    groups: list[ReadGroup] = Field(max_length=GROUPS_MAX)
    files: list[ReadsFile] = Field(default_factory=list)
    errors: list[Annotated[str, AfterValidator(shown)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _groups_add_up(self) -> Self:
        for index, group in enumerate(self.groups):
            where = f"groups.{index}"
            for name, hist, width in (
                ("length_hist", group.length_hist, self.length_bin),
                ("q_hist", group.q_hist, self.q_bin),
            ):
                if sum(hist.values()) != group.reads:
                    raise ValueError(
                        f"{where}.{name} counts {sum(hist.values())} reads, not {group.reads}"
                    )
                if any(start % width for start in hist):
                    raise ValueError(f"{where}.{name} has a bin not on a multiple of {width}")
            shortest = sum(start * count for start, count in group.length_hist.items())
            longest = shortest + (self.length_bin - 1) * group.reads
            if not shortest <= group.bases <= longest:
                raise ValueError(
                    f"{where}.bases is {group.bases}, but its length bins hold "
                    f"{shortest} to {longest}"
                )
            if group.qscore_sum > Q_MAX * group.reads:
                raise ValueError(f"{where}.qscore_sum is more than Q{Q_MAX} a read")
        return self


class AccountLine(BaseModel):
    """One raw file's line of a job's account (``core/account.py``)."""

    model_config = ConfigDict(extra="ignore")

    name: Label
    reads_in: Count | None
    came_out: Count
    split: Count
    twice: Count
    rejected: Annotated[str, AfterValidator(lambda text: _one_line(text))] | None = None


class JobAccountRecord(BaseModel):
    """The JSON object of ``paths.ACCOUNT_FILE``: a DONE job's account (its files done), or a
    rejected part's (``rejected`` says why)."""

    model_config = ConfigDict(extra="ignore")

    format: Literal["bcmanager-job-account"]
    version: Literal[1]
    rejected: Annotated[str, AfterValidator(lambda text: _one_line(text))] | None = None
    files: list[AccountLine] = Field(max_length=100_000)
    records_out: Count = 0


@dataclass(slots=True)
class AccountTally:
    """The account of a run's done files: raw reads in against the records merged."""

    reads_in: int = 0  # raw reads of the done files whose read ids were read
    came_out: int = 0
    split: int = 0  # raw reads that came out as several records
    records_out: int = 0
    files_unchecked: int = 0  # done files whose raw reads could not be read (deleted)
    jobs_without_account: int = 0  # DONE jobs with no account (made before there was one)
    files_rejected: int = 0  # rejections of files, each attempt counted once

    def record(self) -> list[int]:
        return [
            self.reads_in,
            self.came_out,
            self.split,
            self.records_out,
            self.files_unchecked,
            self.jobs_without_account,
            self.files_rejected,
        ]


class Bins:
    """Counts by bin start, in bins of one width, sparse (only bins that hold something are
    kept), at most ``most`` of them: more, and the width doubles. ``span``: bound the distance
    from the first bin to the last instead of the number held (for a chart drawn densely)."""

    __slots__ = ("counts", "most", "span", "widest", "width")

    def __init__(self, width: int, most: int, widest: int, *, span: bool = False) -> None:
        self.width = width
        self.most = most
        self.widest = widest
        self.span = span
        self.counts: dict[int, int] = {}

    def add(self, value: float, count: int) -> None:
        start = int(value // self.width) * self.width
        self.counts[start] = self.counts.get(start, 0) + count
        self._fit()

    def absorb(self, counts: Mapping[int, int], width: int) -> None:
        """Add another histogram's counts (``width`` wide bins, by start). Exact when ``width``
        divides this one's width, which is then widened to a common multiple when it can."""
        if self.width % width:
            common = math.lcm(self.width, width)
            self._rebin(common if common <= self.widest else max(self.width, width))
        for start, count in counts.items():
            if count:
                key = start // self.width * self.width
                self.counts[key] = self.counts.get(key, 0) + count
        self._fit()

    def _size(self) -> int:
        if self.span and self.counts:
            return (max(self.counts) - min(self.counts)) // self.width + 1
        return len(self.counts)

    def _fit(self) -> None:
        while self._size() > self.most:
            self._rebin(self.width * 2)

    def _rebin(self, width: int) -> None:
        merged: dict[int, int] = {}
        for start, count in self.counts.items():
            key = start // width * width
            merged[key] = merged.get(key, 0) + count
        self.width, self.counts = width, merged

    def total(self) -> int:
        return sum(self.counts.values())

    def snapshot(self, tail: float = 0.0, bars: int = DISPLAY_BARS) -> Histogram:
        """Dense bars from 0, at most ``bars`` of them, showing all but a ``tail`` share of the
        counts (those in the highest bins, summed in ``beyond``)."""
        total = self.total()
        if not total:
            return Histogram(bin_width=self.width, counts=[], beyond=0)
        starts = sorted(self.counts)
        cut = starts[-1] + self.width
        above = total
        for start in starts:
            if above <= tail * total:
                cut = start
                break
            above -= self.counts[start]
        width = self.width
        while -(-cut // width) > bars:
            width *= 2
        shown_bars = [0] * -(-cut // width)
        beyond = 0
        for start, count in self.counts.items():
            if start < len(shown_bars) * width:
                shown_bars[start // width] += count
            else:
                beyond += count
        return Histogram(bin_width=width, counts=shown_bars, beyond=beyond)

    def record(self) -> dict[str, Any]:
        return {"width": self.width, "counts": sorted(self.counts.items())}

    def restore(self, record: _BinsRecord) -> None:
        self.width = record.width
        self.counts = {}
        for start, count in record.counts:
            self.counts[start] = self.counts.get(start, 0) + count
        self._fit()


@dataclass(slots=True)
class ReadSums:
    """Reads, bases and the sum of their mean Q-scores."""

    reads: int = 0
    bases: int = 0
    qscore_sum: float = 0.0

    def add(self, reads: int, bases: int, qscore_sum: float) -> None:
        self.reads += reads
        self.bases += bases
        self.qscore_sum += qscore_sum

    def mean_q(self) -> float | None:
        return round(self.qscore_sum / self.reads, 2) if self.reads else None


@dataclass(slots=True)
class Split:
    """A tally of the reads that passed beside one of those that failed."""

    passed: ReadSums
    failed: ReadSums

    @classmethod
    def empty(cls) -> Split:
        return cls(ReadSums(), ReadSums())

    def both(self) -> ReadSums:
        return ReadSums(
            self.passed.reads + self.failed.reads,
            self.passed.bases + self.failed.bases,
            self.passed.qscore_sum + self.failed.qscore_sum,
        )

    def snapshot(self) -> ReadTally:
        both = self.both()
        return ReadTally(
            reads=both.reads,
            bases=both.bases,
            pass_reads=self.passed.reads,
            pass_bases=self.passed.bases,
            mean_q=both.mean_q(),
        )


@dataclass(slots=True)
class EngineTally:
    """An engine's jobs, and the time its basecaller ran over the jobs whose time is known."""

    jobs: int = 0
    reads: int = 0
    bases: int = 0
    busy_seconds: float = 0.0
    timed_bases: int = 0  # the bases of the jobs in busy_seconds: throughput is their ratio


class RunYield:
    """The per-run totals. Memory is bounded: see the module's constants."""

    __slots__ = (
        "account",
        "barcodes",
        "basecallers",
        "engines",
        "files_unreadable",
        "jobs",
        "jobs_without_stats",
        "lengths",
        "more_barcodes",
        "more_basecallers",
        "over_time",
        "problems",
        "qscores",
        "rejections",
        "total",
    )

    def __init__(self) -> None:
        self.jobs = 0
        self.jobs_without_stats = 0
        self.files_unreadable = 0
        self.total = Split.empty()
        self.barcodes: dict[str | None, Split] = {}
        self.more_barcodes = Split.empty()
        self.lengths = Bins(1, LENGTH_BINS, LENGTH_WIDEST)
        self.qscores = Bins(1, Q_BINS, Q_WIDEST)
        self.over_time = Bins(HOUR, YIELD_BUCKETS, HOUR, span=True)
        self.basecallers: dict[tuple[str | None, str | None, str | None], int] = {}
        self.more_basecallers = 0
        self.engines: dict[str, EngineTally] = {}
        self.problems: deque[str] = deque(maxlen=PROBLEMS_KEPT)
        self.account = AccountTally()
        self.rejections: deque[str] = deque(maxlen=PROBLEMS_KEPT)

    def add_account(self, record: JobAccountRecord | str | None) -> None:
        """Fold in the account of one DONE job (None: it has none; a string: why it cannot be
        read)."""
        tally = self.account
        if not isinstance(record, JobAccountRecord):
            tally.jobs_without_account += 1
            if record is not None:
                self._problem(record)
            return
        for line in record.files:
            if line.reads_in is None:
                tally.files_unchecked += 1
            else:
                tally.reads_in += line.reads_in
                tally.came_out += min(line.came_out, line.reads_in)
                tally.split += line.split
        tally.records_out += record.records_out

    def add_rejection(self, record: JobAccountRecord) -> None:
        """Fold in files a DONE's account rejected: a failed attempt of theirs, and why."""
        self.account.files_rejected += len(record.files)
        if record.rejected:
            self.rejections.append(record.rejected)

    def add(
        self,
        stats: JobStats,
        ended_at: float,
        *,
        engine: str | None = None,
        busy_seconds: float | None = None,
    ) -> None:
        """Fold in one DONE job: ``ended_at`` is the wall time (Unix seconds) it ended,
        ``engine`` the engine that ran it and ``busy_seconds`` how long its basecaller ran,
        when known (for the engines' throughput)."""
        self.jobs += 1
        job = ReadSums()
        for group in stats.groups:
            job.add(group.reads, group.bases, group.qscore_sum)
            for split in (self.total, self._barcode(group.barcode)):
                (split.passed if group.passed else split.failed).add(
                    group.reads, group.bases, group.qscore_sum
                )
            self.lengths.absorb(group.length_hist, stats.length_bin)
            self.qscores.absorb(group.q_hist, stats.q_bin)
        self.over_time.add(ended_at, job.bases)
        caller = (stats.basecaller.name, stats.basecaller.version, stats.basecaller.model)
        if caller in self.basecallers or len(self.basecallers) < BASECALLERS_MAX:
            self.basecallers[caller] = self.basecallers.get(caller, 0) + 1
        else:
            self.more_basecallers += 1
        if engine is not None:
            tally = self._engine(engine)
            tally.jobs += 1
            tally.reads += job.reads
            tally.bases += job.bases
            if busy_seconds is not None:
                tally.busy_seconds += busy_seconds
                tally.timed_bases += job.bases
        unread = [entry for entry in stats.files if entry.error is not None]
        self.files_unreadable += len(unread)
        for entry in unread[:PROBLEMS_KEPT]:
            self._problem(f"{entry.path}: {entry.error}")
        for error in stats.errors[:PROBLEMS_KEPT]:
            self._problem(error)

    def add_without_stats(self, job: str, reason: str) -> None:
        """Count a DONE job whose statistics could not be read (``read_job_stats`` said why)."""
        self.jobs_without_stats += 1
        self._problem(f"job {job}: {reason}")

    def _problem(self, line: str) -> None:
        self.problems.append(_one_line(line))

    def _barcode(self, barcode: str | None) -> Split:
        split = self.barcodes.get(barcode)
        if split is None:
            if len(self.barcodes) >= BARCODES_MAX:
                return self.more_barcodes
            split = self.barcodes[barcode] = Split.empty()
        return split

    def _engine(self, engine: str) -> EngineTally:
        tally = self.engines.get(engine)
        if tally is None:
            if len(self.engines) >= ENGINES_MAX:
                engine = OTHER_ENGINES
            tally = self.engines.setdefault(engine, EngineTally())
        return tally

    def n50(self) -> int | None:
        """The start of the length bin holding the N50: the length such that reads at least
        that long hold half the bases. Bases per bin are not known, only reads, so each read
        counts as the middle of its bin: exact with bins one base wide; otherwise, when the
        half falls close to a bin's edge, the next bin's start may come out (within one bin
        width of the exact N50 either way)."""
        middle = (self.lengths.width - 1) / 2
        weighted = sorted(
            ((start, count * (start + middle)) for start, count in self.lengths.counts.items()),
            reverse=True,
        )
        half = sum(bases for _, bases in weighted) / 2
        held = 0.0
        for start, bases in weighted:
            held += bases
            if held >= half and held > 0:
                return start
        return None

    def status(self) -> RunYieldStatus:
        total = self.total.both()
        models = sorted({model for _, _, model in self.basecallers if model is not None})
        barcodes = sorted(self.barcodes.items(), key=lambda item: (item[0] is not None, item[0]))
        more = self.more_barcodes.both()
        return RunYieldStatus(
            jobs=self.jobs,
            jobs_without_stats=self.jobs_without_stats,
            files_unreadable=self.files_unreadable,
            reads=total.reads,
            bases=total.bases,
            pass_reads=self.total.passed.reads,
            pass_bases=self.total.passed.bases,
            fail_reads=self.total.failed.reads,
            fail_bases=self.total.failed.bases,
            pass_fraction=round(self.total.passed.reads / total.reads, 4) if total.reads else None,
            mean_q=total.mean_q(),
            n50=self.n50(),
            n50_resolution=self.lengths.width,
            length_histogram=self.lengths.snapshot(LENGTH_TAIL),
            q_histogram=self.qscores.snapshot(),
            yield_over_time=self._series(),
            barcodes=[
                BarcodeYield(barcode=barcode, **split.snapshot().model_dump())
                for barcode, split in barcodes
            ],
            more_barcodes=self.more_barcodes.snapshot() if more.reads else None,
            basecallers=[
                BasecallerUse(name=name, version=version, model=model, jobs=jobs)
                for (name, version, model), jobs in sorted(
                    self.basecallers.items(), key=lambda item: -item[1]
                )
            ],
            basecallers_not_listed=self.more_basecallers,
            models=models,
            mixed_models=len(models) > 1,
            engines=[
                EngineYield(
                    engine=engine,
                    jobs=tally.jobs,
                    reads=tally.reads,
                    bases=tally.bases,
                    busy_seconds=round(tally.busy_seconds, 1),
                    bases_per_hour=round(tally.timed_bases * HOUR / tally.busy_seconds, 1)
                    if tally.busy_seconds > 0
                    else None,
                )
                for engine, tally in sorted(self.engines.items(), key=lambda item: -item[1].bases)
            ],
            problems=list(self.problems),
            account=self._account_snapshot(),
        )

    def _account_snapshot(self) -> ReadsAccount:
        tally = self.account
        return ReadsAccount(
            reads_in=tally.reads_in,
            records_out=tally.records_out,
            split_reads=tally.split,
            reads_missing=tally.reads_in - tally.came_out,
            files_unchecked=tally.files_unchecked,
            jobs_without_account=tally.jobs_without_account,
            files_rejected=tally.files_rejected,
            rejections=list(self.rejections),
        )

    def _series(self) -> YieldSeries:
        bins = self.over_time
        if not bins.counts:
            return YieldSeries(bucket_seconds=bins.width, start=None, bases=[])
        first = min(bins.counts)
        size = (max(bins.counts) - first) // bins.width + 1
        bases = [0] * size
        for start, count in bins.counts.items():
            bases[(start - first) // bins.width] += count
        return YieldSeries(bucket_seconds=bins.width, start=float(first), bases=bases)

    # -- surviving a restart ----------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """Everything it holds, as JSON-able values (``from_record`` reads it back)."""

        def split(value: Split) -> list[list[float]]:
            return [
                [tally.reads, tally.bases, tally.qscore_sum]
                for tally in (value.passed, value.failed)
            ]

        return {
            "format": "bcmanager-run-yield",
            "version": 1,
            "jobs": self.jobs,
            "jobs_without_stats": self.jobs_without_stats,
            "files_unreadable": self.files_unreadable,
            "total": split(self.total),
            "barcodes": [[barcode, split(value)] for barcode, value in self.barcodes.items()],
            "more_barcodes": split(self.more_barcodes),
            "lengths": self.lengths.record(),
            "qscores": self.qscores.record(),
            "over_time": self.over_time.record(),
            "basecallers": [[*caller, jobs] for caller, jobs in self.basecallers.items()],
            "more_basecallers": self.more_basecallers,
            "engines": [
                [engine, t.jobs, t.reads, t.bases, t.busy_seconds, t.timed_bases]
                for engine, t in self.engines.items()
            ],
            "problems": list(self.problems),
            "account": self.account.record(),
            "rejections": list(self.rejections),
        }

    @classmethod
    def from_record(cls, data: object) -> RunYield:
        """The ledger a ``to_record`` value stands for. Raises ValueError (one line) on anything
        else, so that a damaged record is rebuilt from the log folders instead."""
        try:
            record = _Record.model_validate(data)
        except ValidationError as error:
            raise ValueError(f"not a run yield record: {_first_error(error)}") from None
        ledger = cls()
        ledger.jobs = record.jobs
        ledger.jobs_without_stats = record.jobs_without_stats
        ledger.files_unreadable = record.files_unreadable
        ledger.total = _split(record.total)
        for barcode, value in record.barcodes[:BARCODES_MAX]:
            ledger.barcodes[barcode] = _split(value)
        ledger.more_barcodes = _split(record.more_barcodes)
        ledger.lengths.restore(record.lengths)
        ledger.qscores.restore(record.qscores)
        ledger.over_time.restore(record.over_time)
        for name, version, model, jobs in record.basecallers[:BASECALLERS_MAX]:
            ledger.basecallers[(name, version, model)] = jobs
        ledger.more_basecallers = record.more_basecallers
        for engine, jobs, reads, bases, busy, timed in record.engines[: ENGINES_MAX + 1]:
            ledger.engines[engine] = EngineTally(jobs, reads, bases, busy, timed)
        ledger.problems.extend(record.problems[-PROBLEMS_KEPT:])
        if record.account is not None:
            ledger.account = AccountTally(*record.account)
        ledger.rejections.extend(record.rejections[-PROBLEMS_KEPT:])
        return ledger


NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_TallyRecord = tuple[Count, Count, NonNegative]
_SplitRecord = tuple[_TallyRecord, _TallyRecord]


class _BinsRecord(BaseModel):
    width: int = Field(gt=0, le=COUNT_MAX)
    counts: list[tuple[Annotated[int, Field(ge=0)], Count]] = Field(max_length=100_000)


class _Record(BaseModel):
    format: Literal["bcmanager-run-yield"]
    version: Literal[1]
    jobs: Count
    jobs_without_stats: Count
    files_unreadable: Count
    total: _SplitRecord
    barcodes: list[tuple[Label | None, _SplitRecord]]
    more_barcodes: _SplitRecord
    lengths: _BinsRecord
    qscores: _BinsRecord
    over_time: _BinsRecord
    basecallers: list[tuple[Label | None, Label | None, Label | None, Count]]
    more_basecallers: Count
    engines: list[tuple[Label, Count, Count, Count, NonNegative, Count]]
    problems: list[str]
    # Records made before the account of reads have neither.
    account: tuple[Count, Count, Count, Count, Count, Count, Count] | None = None
    rejections: list[str] = Field(default_factory=list)


def _split(value: _SplitRecord) -> Split:
    return Split(ReadSums(*value[0]), ReadSums(*value[1]))


def _one_line(text: str) -> str:
    line = " ".join(shown(text).split())
    return line if len(line) <= REASON_MAX else line[: REASON_MAX - 1] + "…"


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return _one_line(f"{where}: {message}" if where else message)


# -- the I/O edge -----------------------------------------------------------------------------


def read_job_stats(path: Path) -> JobStats | str:
    """One job's statistics, or why there are none, in one line. Never raises: an engine wrote
    the file (any bytes, any size, a symlink, a folder)."""
    return _read_json(path, JobStats)


def read_job_account(path: Path) -> JobAccountRecord | str | None:
    """One job's account, why it cannot be read, or None where there is none (a job done
    before there were accounts, or a failure no account rejected). Never raises."""
    found = _read_json(path, JobAccountRecord)
    return None if found == f"no {path.name}" else found


def _read_json(path: Path, model: type[_M]) -> _M | str:
    """A small JSON file in a job's output folder, validated, or why not, in one line."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return f"no {path.name}"
    except OSError as error:
        return _one_line(f"{path.name} cannot be opened: {error.strerror or error}")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"{path.name} is not a regular file"
        chunks: list[bytes] = []
        size = 0
        while size <= STATS_MAX and (chunk := os.read(fd, STATS_MAX + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        return _one_line(f"{path.name} cannot be read: {error.strerror or error}")
    finally:
        os.close(fd)
    if size > STATS_MAX:
        return f"{path.name} is larger than {STATS_MAX // 1024} KiB"
    try:
        return model.model_validate_json(b"".join(chunks))
    except ValidationError as error:
        return f"{path.name} is not valid: {_first_error(error)}"


@dataclass(frozen=True, slots=True)
class LoggedJob:
    """What a DONE job's log folder says of its reads: its statistics (or why there are none),
    when it ended (its folder's status-change time: the rename that ended it) and how long its
    basecaller ran."""

    job: str
    engine: str | None
    stats: JobStats | str
    ended_at: float
    busy_seconds: float | None
    account: JobAccountRecord | str | None = None

    def add_to(self, ledger: RunYield) -> None:
        ledger.add_account(self.account)
        if isinstance(self.stats, str):
            ledger.add_without_stats(self.job, self.stats)
        else:
            ledger.add(
                self.stats, self.ended_at, engine=self.engine, busy_seconds=self.busy_seconds
            )


def read_logged_job(folder: Path) -> LoggedJob:
    """One DONE job's ``LOGOUTPUT_<jobid>_<engine>`` folder, read (one small file or two)."""
    parsed = parse_job_folder(folder.name)
    job, engine = (
        (parsed.jobid, parsed.engine)
        if parsed is not None and parsed.kind is FolderKind.LOGOUTPUT
        else (shown(folder.name), None)
    )
    stats: JobStats | str = read_job_stats(folder / STATS_FILE)
    try:
        ended_at = os.stat(folder).st_ctime
    except OSError as error:
        return LoggedJob(job, engine, f"cannot be dated: {error.strerror or error}", 0.0, None)
    attempt = attempt_record(folder / ATTEMPT_FILE)
    account = read_job_account(folder / ACCOUNT_FILE)
    return LoggedJob(job, engine, stats, ended_at, attempt.seconds if attempt else None, account)


def read_rejection(folder: Path) -> JobAccountRecord | None:
    """The account of a failed attempt's ``FAILEDOUTPUT_`` folder when a DONE's account made
    it (its files rejected, and why); None for any other failure."""
    found = read_job_account(folder / ACCOUNT_FILE)
    return found if isinstance(found, JobAccountRecord) and found.rejected else None


JobOutput = LoggedJob | JobAccountRecord | None


def read_job_output(folder: Path) -> JobOutput:
    """What a job's output folder adds to its run's ledger: a DONE job's
    (``LOGOUTPUT_<jobid>_<engine>``: the agent's statistics and attempt record, and the
    account), a rejected part's (``FAILEDOUTPUT_`` whose account says why), or None."""
    if folder.name.startswith(FolderKind.LOGOUTPUT.value):
        return read_logged_job(folder)
    if folder.name.startswith(FolderKind.FAILEDOUTPUT.value):
        return read_rejection(folder)
    return None


def fold(ledger: RunYield, found: JobOutput) -> None:
    """Add what ``read_job_output`` found to ``ledger``."""
    if isinstance(found, LoggedJob):
        found.add_to(ledger)
    elif found is not None:
        ledger.add_rejection(found)


def rebuild_yield(job_folders: Iterable[Path]) -> RunYield:
    """A run's ledger from the output folders its jobs left (``read_job_output``); other
    folders are passed over. Reads one small file or two per job: run it in a worker thread."""
    ledger = RunYield()
    for folder in job_folders:
        fold(ledger, read_job_output(folder))
    return ledger
