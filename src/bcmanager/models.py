"""The JSON the service sends, as Pydantic models, so /docs and openapi/openapi.json describe it.

The first four are the wire contract of docs/protocol.md: their keys and value types are fixed.
Fields that carry a name or a path read from disk are ``Shown``/``ShownNames``: bytes that are
not UTF-8, which JSON cannot carry, reach the reply as ``\\xNN`` (``paths.shown``) instead of
failing it with a 500.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from bcmanager.paths import is_utf8, shown


def _shown_names(names: list[str]) -> list[str]:
    """One test of all the names joined covers an ordinary batch; only an odd one costs more."""
    return names if is_utf8("".join(names)) else [shown(name) for name in names]


Shown = Annotated[str, AfterValidator(shown)]
ShownNames = Annotated[list[str], AfterValidator(_shown_names)]


class JobState(str, Enum):
    """Where one job stands; spelled as the engine protocol spells it, plus EXPIRED."""

    ASSIGNED = "ASSIGNED"  # handed to an engine, lease running
    STARTED = "STARTED"  # the engine reports its basecaller started
    PROCESSING = "PROCESSING"  # the engine reports it is working
    DONE = "DONE"  # output merged into pass/ and fail/: files done
    FAILED = "FAILED"  # the engine reported failure: files retried, in halves when several
    QUARANTINED = "QUARANTINED"  # reported FAILED, and its one file has failed enough: set aside
    STOPPED = "STOPPED"  # the engine gave the batch back unfinished: files pending again
    EXPIRED = "EXPIRED"  # no keepalive within the lease: files pending again, output never merged


class RunPhase(str, Enum):
    """Whether the sequencer still writes, and whether all it wrote is basecalled."""

    SEQUENCING = "sequencing"  # no final_summary_*.txt yet
    BASECALLING = "finished, basecalling"  # sequencing stopped; files waiting, pending or leased
    COMPLETE = "complete"  # sequencing stopped, and every file is done, failed or missing


class BCBatch(BaseModel):
    """A batch of raw files leased to one engine (jobid "-1" and batch_size 0: no work now)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "report_back_period": 90,
                    "report_back_interval": 90,
                    "jobid": "262817286294989972663956585584100365723",
                    "job_input_dir": "ASSIGNED_262817286294989972663956585584100365723_gpu004",
                    "job_output_dir": "TMPOUTPUT_262817286294989972663956585584100365723_gpu004",
                    "bc_engine_id": "gpu004",
                    "batch_size": 2,
                    "batch": ["a.pod5", "b.pod5"],
                    "input_dir": "/data/run1/pod5",
                    "output_dir": "/data/run1/basecalled",
                    "run_path": ".",
                    "priority": 10,
                    "model": "dna_r10.4.1_e8.2_400bps_sup@v5.0.0",
                    "modified_bases": "5mCG_5hmCG",
                    "kit": "",
                    "sample_rate": 5000,
                    "flow_cell_product": "FLO-PRO114M",
                    "sequencing_kit": "SQK-LSK114",
                }
            ]
        }
    )

    report_back_period: int = Field(description="Seconds the lease lasts after a keepalive.")
    report_back_interval: int = Field(description="Same as report_back_period (clients read it).")
    jobid: str = Field(description="Decimal job id; '-1' when there is no work.")
    job_input_dir: str = Field(
        description="Folder of symlinks to the batch, relative to input_dir."
    )
    job_output_dir: str = Field(description="Folder for the job's FASTQ, relative to output_dir.")
    bc_engine_id: str = Field(description="The engine the batch is leased to.")
    batch_size: int = Field(description="Number of files in batch; 0 means nothing to do now.")
    batch: ShownNames = Field(description="Raw file names, oldest first.")
    input_dir: Shown = Field(description="The manager's INPUT_DIR, absolute.")
    output_dir: Shown = Field(description="The manager's OUTPUT_DIR, absolute.")
    # The batch's run and how to basecall it: for agents whose command template names them.
    run_path: Shown = Field(
        "", description="The run's folder relative to INPUT_DIR ('.': INPUT_DIR itself)."
    )
    priority: int = Field(0, description="The run's priority (higher is served first).")
    model: str = Field("", description="Basecalling model the runs file gives the run.")
    modified_bases: str = Field("", description="Modified bases the runs file gives the run.")
    kit: str = Field("", description="Kit the runs file gives the run (e.g. for barcodes).")
    sample_rate: int | None = Field(
        None, description="Samples per second, as the run's POD5 files say; null: not known."
    )
    flow_cell_product: str = Field(
        "", description="Flow cell product code the run's POD5 files name (FLO-PRO114M)."
    )
    sequencing_kit: str = Field("", description="Sequencing kit the run's POD5 files name.")


class KeepaliveReply(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"late": False}]})

    late: bool = Field(description="True: the manager no longer holds this job; stop it.")


class CompletedReply(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"ok": True}]})

    ok: bool = Field(description="Always true: the completion is recorded (or was already).")


class HeartbeatReply(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "false", "inactivity_interval": 12.5, "phase": "sequencing"}]
        }
    )

    status: Literal["true", "false"] = Field(
        description='The string "true" once no engine called for BCM_SHUTDOWN_INTERVAL seconds.'
    )
    inactivity_interval: float = Field(description="Seconds since the last engine call.")
    problems: ShownNames = Field(
        default_factory=list,
        description="Why the manager cannot work (with a 503 reply), then jobs whose folders it "
        "could not put right yet (with a 200 reply: the rest of the run goes on).",
    )
    phase: RunPhase = Field(
        description='"complete" once sequencing finished and everything is basecalled: a '
        "watchdog may then end the allocation (idle alone may mean the engines are gone)."
    )


class ReadyReply(BaseModel):
    ready: bool = Field(description="True once start-up recovery and the first scan are done.")


class FileCounts(BaseModel):
    """Raw files by state."""

    waiting: int = Field(description="Seen but not complete yet.")
    pending: int = Field(description="Complete, queued for an engine.")
    leased: int = Field(description="In the batch of a live job.")
    done: int = Field(description="FASTQ final.")
    failed: int = Field(description="Set aside after a failed job.")
    missing: int = Field(
        0, description="Gone from INPUT_DIR before an engine got them (moved or deleted)."
    )


class FileBytes(BaseModel):
    """Bytes of raw files by state (files recovered at start-up count once they are sized,
    which the first scan finishes before ``ready``)."""

    waiting: int = Field(description="Bytes written so far of files not complete yet.")
    pending: int = Field(description="Bytes queued for an engine.")
    leased: int = Field(description="Bytes in the batches of live jobs.")
    done: int = Field(description="Bytes basecalled.")
    failed: int = Field(description="Bytes set aside after failed jobs.")
    missing: int = Field(0, description="Always 0: a missing file's bytes are not there.")


class LeasedJob(BaseModel):
    jobid: str
    engine: str
    state: str = Field(description="ASSIGNED, STARTED or PROCESSING, as last reported.")
    files: ShownNames
    seconds_left: float = Field(description="Seconds until the lease runs out.")


class Rate(BaseModel):
    files_per_minute: float
    bytes_per_minute: float


class WindowRates(BaseModel):
    """The sequencer's pace beside the basecalling pace, over one window. A window longer than
    the run so far is measured over the run so far (and over at least one minute)."""

    arrived: Rate = Field(description="Raw files that became complete (the sequencer's output).")
    basecalled: Rate = Field(description="Raw files whose FASTQ became final.")


class Rates(BaseModel):
    last_5_minutes: WindowRates
    last_60_minutes: WindowRates


class Drain(BaseModel):
    """Are we keeping up with the sequencer, and when will basecalling be done?"""

    backlog_files: int = Field(description="Files pending or leased.")
    backlog_bytes: int = Field(description="Bytes pending or leased.")
    eta_seconds: float | None = Field(
        description="Seconds to basecall the backlog at the basecalling rate of the last 60 "
        "minutes: once sequencing finished, when basecalling will be done; before, how far "
        "basecalling lags behind the sequencer. Null while nothing was basecalled in that time."
    )
    growth_files_per_minute: float = Field(
        description="How fast files pile up waiting for an engine over the last 60 minutes "
        "(or the time observed): arrivals minus basecalled files minus the files engines hold "
        "now, per minute. 0 or less: they do not."
    )
    horizon_seconds: float = Field(
        description="The horizon of keeping_up: the backlog must be basecalled within it."
    )
    keeping_up: bool = Field(
        description="True when the backlog is empty, or when it is basecalled within "
        "horizon_seconds at the last hour's pace and the files waiting for an engine grew by "
        "no more than a minute of basecalling over that hour."
    )


class RateSeries(BaseModel):
    """Files per bucket, for a chart of both rates over time."""

    bucket_seconds: int = Field(description="Width of each bucket.")
    current_bucket_seconds: float = Field(
        description="Seconds the last bucket, the current one, has been filling."
    )
    arrived: list[int] = Field(description="Files that became complete, oldest bucket first.")
    basecalled: list[int] = Field(description="Files basecalled, oldest bucket first.")


class History(BaseModel):
    last_hour: RateSeries = Field(description="One-minute buckets.")
    last_3_days: RateSeries = Field(description="Half-hour buckets.")


class EngineTallies(BaseModel):
    """Jobs and files by how they ended."""

    jobs_assigned: int
    files_assigned: int
    jobs_done: int
    files_done: int
    bytes_done: int = Field(description="Bytes of raw files of the DONE jobs.")
    jobs_failed: int
    files_failed: int
    jobs_expired: int = Field(description="Jobs whose lease ran out before they reported.")
    files_expired: int
    jobs_released: int = Field(description="Jobs given back unfinished (STOPPED).")
    files_released: int
    mean_seconds_per_file: float | None = Field(
        description="Time from assignment to DONE per file, over the done jobs; null before one."
    )


class EngineStatus(EngineTallies):
    """One listed engine's work since the manager started (or since it was last retired)."""

    engine: str
    current_jobs: list[str] = Field(description="Jobs it holds a lease on now (usually one).")
    seconds_since_contact: float = Field(
        description="Seconds since its last assignwork, keepalive or completed call."
    )


class RetiredEngines(EngineTallies):
    """The engines no longer listed, summed, so that sums over ``engines`` plus this are the
    run's totals. An idle engine (one without a live job) is retired once it has been idle for
    ``idle_seconds``, or as soon as more than ``idle_listed`` engines are idle (those idle
    longest first). One that calls again is listed again, counting from zero."""

    engines: int = Field(
        description="Engines retired (one that came back and was retired again counts twice)."
    )
    idle_seconds: float = Field(
        description="Seconds after its last call or the end of its last job that an idle "
        "engine is retired."
    )
    idle_listed: int = Field(description="Idle engines listed at most, those active last.")


class ProblemJob(BaseModel):
    """A job that failed (FAILED: its files are tried again; QUARANTINED: its one file is set
    aside; a DONE whose reads did not all come out counts as failed too) or lost its lease
    (EXPIRED)."""

    jobid: str
    engine: str
    outcome: Literal["FAILED", "QUARANTINED", "EXPIRED"]
    reason: str = Field(
        description="Why, in words: for a DONE whose reads did not all come out, what the "
        "account of its reads found (e.g. 'f3.pod5: 0 of 4,000 reads came out')."
    )
    exit_code: int | None = Field(
        None, description="The basecaller's exit code, as its agent recorded it (failures)."
    )
    signal: str | None = Field(None, description="The signal that ended the basecaller, if one.")
    last_line: str | None = Field(
        None, description="The last line the basecaller wrote to stderr (at most 300 chars)."
    )
    files: int
    seconds_ago: float | None = Field(description="Null: a FAILED_ folder found at start-up.")


class QuarantinedFile(BaseModel):
    """A raw file set aside after failing alone: `bcmanager retry` sends it back."""

    file: Shown
    failed_on: list[str] = Field(description="The engines it failed alone on, one per attempt.")


class BenchedEngine(BaseModel):
    """An engine that gets no work for a while: it failed every job while others succeeded."""

    engine: str
    seconds_left: float = Field(description="Seconds until it is given work again.")
    reason: str


class RetryRequest(BaseModel):
    files: list[str] | None = Field(
        None, description="Raw file names to send back; null or absent: every quarantined file."
    )


class RetryReply(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"retried": ["a.pod5"]}]})

    retried: list[str] = Field(description="The quarantined files now pending again.")


class RunEntry(BaseModel):
    """One run under INPUT_DIR, as the runs table shows it."""

    path: Shown = Field(description="The run's folder relative to INPUT_DIR ('.': INPUT_DIR).")
    phase: RunPhase
    priority: int = Field(description="Higher first; set by the runs file or an operator.")
    paused: bool = Field(description="A paused run is offered to no engine.")
    sealed: bool = Field(
        description="Complete and folded into its seal: a restart reads the seal, not its files."
    )
    raw_folders: int = Field(description="Folders of the run that hold its raw files.")
    output_dir: Shown = Field(description="Where its reads go.")
    files: FileCounts
    bytes: FileBytes
    lag_seconds: float | None = Field(
        description="How long its oldest pending file has waited; null when none is pending."
    )
    basecalled: Rate = Field(description="Its basecalling rate over the last hour.")
    eta_seconds: float | None = Field(
        description="When its backlog is done at that rate; null when it is not moving."
    )
    final_summary: Shown | None = Field(description="MinKNOW's final summary, once written.")
    model: str = Field(description="The basecalling model its settings name ('' for none).")
    modified_bases: str = Field(description="The modified bases its settings name.")
    kit: str = Field(description="The kit its settings name.")
    reads: RunYieldStatus | None = Field(
        None, description="What its reads came to so far; null until its ledger is read back."
    )


class RunsReply(BaseModel):
    runs: list[RunEntry]


class RunRequest(BaseModel):
    run: str = Field(description="The run's path relative to INPUT_DIR, as /runs lists it.")


class PriorityRequest(RunRequest):
    priority: int = Field(description="Higher first.")


class RunStatus(BaseModel):
    """The run's snapshot. Costs the same to compute in a run of any size."""

    input_dir: Shown
    output_dir: Shown
    ready: bool = Field(description="False while the first scan of INPUT_DIR is running.")
    phase: RunPhase
    final_summary: Shown | None = Field(
        description="MinKNOW's final_summary_*.txt, once sequencing finished."
    )
    uptime_seconds: float = Field(description="Seconds since the manager started.")
    files: FileCounts
    bytes: FileBytes
    rates: Rates
    drain: Drain
    history: History
    engines: list[EngineStatus] = Field(
        description="By name: every engine that holds a lease, and the idle engines active "
        "lately (see retired_engines for how many and how long)."
    )
    retired_engines: RetiredEngines = Field(
        description="The work of the engines seen since the start that are no longer listed."
    )
    jobs: list[LeasedJob] = Field(description="Jobs holding a lease now.")
    recent_problems: list[ProblemJob] = Field(
        description="The last failed or expired jobs, newest first (at most 20)."
    )
    quarantined: list[QuarantinedFile] = Field(
        default_factory=list,
        description="Quarantined files (files.failed counts them all; the first 100 by name).",
    )
    benched: list[BenchedEngine] = Field(
        default_factory=list, description="Engines that get no work for now, and why."
    )
    job_problems: ShownNames = Field(
        default_factory=list,
        description="Jobs whose folders the manager could not put right yet (a change the "
        "disk keeps refusing, leftovers start-up could not handle); the rest of the run goes on.",
    )
    runs: list[RunEntry] = Field(
        default_factory=list,
        description="The runs under INPUT_DIR (one when INPUT_DIR is itself one run's folder).",
    )


class ErrorReply(BaseModel):
    detail: Shown = Field(description="What is wrong; nothing was changed.")


class Histogram(BaseModel):
    """Reads by a value (read length, mean Q-score), in bins of one width from 0."""

    bin_width: int = Field(description="The width of each bin.")
    counts: list[int] = Field(
        description="Reads per bin, from 0: counts[i] holds values from i * bin_width up to, "
        "not including, (i + 1) * bin_width."
    )
    beyond: int = Field(
        description="Reads at or beyond len(counts) * bin_width: the long tail, in one sum."
    )


class YieldSeries(BaseModel):
    """Bases basecalled over time, by when each job ended."""

    bucket_seconds: int = Field(description="Width of each bucket: an hour, more in long runs.")
    start: float | None = Field(
        description="Unix time of the first bucket's start; null before the first job."
    )
    bases: list[int] = Field(description="Bases of the jobs that ended in each bucket, in order.")


class ReadTally(BaseModel):
    reads: int
    bases: int
    pass_reads: int
    pass_bases: int
    mean_q: float | None = Field(description="Mean of the reads' mean Q-scores; null: no reads.")


class BarcodeYield(ReadTally):
    barcode: Shown | None = Field(description="The barcode folder (or alias); null: none.")


class BasecallerUse(BaseModel):
    """A basecaller, version and model, as the agents found them, and how many jobs used it."""

    name: Shown | None
    version: Shown | None
    model: Shown | None
    jobs: int


class EngineYield(BaseModel):
    engine: str
    jobs: int = Field(description="Jobs with statistics.")
    reads: int
    bases: int
    busy_seconds: float = Field(description="Time its basecaller ran, over the timed jobs.")
    bases_per_hour: float | None = Field(
        description="Bases of the timed jobs per hour of their time; null: no timed job."
    )


class ReadsAccount(BaseModel):
    """Every read accounted for: the raw reads of a run's done files against what came out."""

    reads_in: int = Field(description="Raw reads of the done files (their POD5 read ids).")
    records_out: int = Field(description="Records merged into pass/ and fail/.")
    split_reads: int = Field(
        description="Raw reads that came out as several records (Dorado's split reads)."
    )
    reads_missing: int = Field(
        description="Raw reads of done files that did not come out: 0 in a healthy run; "
        "only what BCM_MAY_DROP_READS lets a basecaller drop on purpose."
    )
    files_unchecked: int = Field(
        description="Done files whose raw reads could not be read (deleted while leased)."
    )
    jobs_without_account: int = Field(
        description="DONE jobs with no account of their reads (done before there was one)."
    )
    files_rejected: int = Field(
        description="Files a DONE's account rejected (reads missing, twice, or in a reads "
        "file cut short), each attempt once: they went to the failure policy."
    )
    rejections: list[str] = Field(description="Why, for the last few, newest last.")


class RunYieldStatus(BaseModel):
    """What a run's reads came to, from the statistics of its DONE jobs."""

    jobs: int = Field(description="DONE jobs whose statistics were read.")
    jobs_without_stats: int = Field(
        description="DONE jobs whose statistics were missing or invalid: their reads are not "
        "counted anywhere here."
    )
    files_unreadable: int = Field(
        description="Reads files the agents could not read: their reads are not counted."
    )
    reads: int
    bases: int
    pass_reads: int
    pass_bases: int
    fail_reads: int
    fail_bases: int
    pass_fraction: float | None = Field(description="pass_reads / reads; null: no reads.")
    mean_q: float | None = Field(description="Mean of the reads' mean Q-scores; null: no reads.")
    n50: int | None = Field(
        description="Read length N50 from the length histogram: the start of the bin that "
        "holds it (rarely the next bin's), so within n50_resolution of the exact figure; "
        "null: no reads."
    )
    n50_resolution: int = Field(description="Width of the length bins N50 is computed from.")
    length_histogram: Histogram
    q_histogram: Histogram
    yield_over_time: YieldSeries
    barcodes: list[BarcodeYield] = Field(description="By barcode; null (no barcode) first.")
    more_barcodes: ReadTally | None = Field(
        description="The reads of barcodes beyond the first 512 seen, in one sum; null: none."
    )
    basecallers: list[BasecallerUse] = Field(description="Most used first.")
    basecallers_not_listed: int = Field(
        description="Jobs of basecallers (name, version, model) beyond the first 16 seen."
    )
    models: list[Shown] = Field(description="The distinct basecaller models seen.")
    mixed_models: bool = Field(
        description="True: the run's reads come from more than one basecaller model."
    )
    engines: list[EngineYield] = Field(description="Reads and bases by engine, most bases first.")
    account: ReadsAccount = Field(
        description="The account of the run's reads: raw reads in against records out."
    )
    problems: ShownNames = Field(description="The last statistics that could not be counted.")
