"""Log lines: one per event of the run, as plain text (default) or as JSON lines (BCM_LOG_FORMAT).

An event line names the event first, then its facts as key=value, then the run's file counts
after it, so `grep ' expired '` or a log collector answers "what happened to job X" and "how did
the backlog move" alike. In JSON the same facts are keys of the line's object.

The lines for changes of the run are written from its events (``event_line``), an engine
benched among them; the manager adds its own (ready) and the facility its own (found,
finished, complete, ...).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal, NamedTuple, assert_never

from bcmanager.core.events import (
    Adopted,
    Benched,
    Contacted,
    Ended,
    EndedFound,
    Event,
    Facts,
    FileMissing,
    FileSeen,
    FoundEnded,
    KeptAlive,
    Late,
    Leased,
    Restored,
    Retried,
    SequencingFinished,
    Sized,
    Split,
)
from bcmanager.core.jobs import FileState, Job
from bcmanager.models import JobState

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# Libraries whose INFO lines are chatter, not events of the run: watchfiles says "N changes
# detected" every time a file being written is touched (every 200 ms while MinKNOW writes),
# and uvicorn.access would add a line per request. Their warnings still show.
CHATTY = ("watchfiles", "uvicorn.access")
EVENT_KEY = "bcm_event"  # the LogRecord attribute that carries an event's facts

# The event logged for each end of a job.
ENDINGS = {
    JobState.DONE: "done",
    JobState.FAILED: "failed",
    JobState.QUARANTINED: "quarantined",
    JobState.STOPPED: "released",
    JobState.EXPIRED: "expired",
}

Value = str | int | None  # a fact of a line; None ones are left out


class Line(NamedTuple):
    """One event line, before the run's counts are added."""

    event: str
    level: int
    facts: dict[str, Value]


def event_line(event: Event, facts: Facts) -> Line | None:
    """The line a change of the run is logged as, or None for one that is not: a file that is
    still waiting, a lease kept alive or an engine's call (every few seconds per engine), what a
    start-up restored and sized (it logs what it repaired instead), and the sequencer's end (the
    facility logs it, once per run)."""
    match event:
        case FileSeen():
            if event.after is not FileState.PENDING:
                return None
            return Line("arrived", logging.INFO, {"file": event.name, "bytes": facts.size})
        case FileMissing():
            return Line("missing", logging.WARNING, {"file": event.name})
        case Leased():
            return _job_line("assigned", event.job)
        case Adopted():
            return _job_line("adopted", event.job)
        case Late():
            return Line("late", logging.INFO, {"jobid": event.jobid, "engine": event.engine})
        case Split():
            return None  # the part's end is logged, with its reason
        case Ended():
            reason = facts.record.describe() if facts.record is not None else None
            return _job_line(ENDINGS[event.outcome], event.job, reason)
        case Retried():
            return Line("retried", logging.INFO, {"files": len(event.files)})
        case Benched():
            return Line(
                "benched", logging.WARNING, {"engine": event.engine, "reason": event.reason}
            )
        case (
            KeptAlive()
            | FoundEnded()
            | EndedFound()
            | Restored()
            | Contacted()
            | Sized()
            | SequencingFinished()
        ):
            return None
        case _:
            assert_never(event)


def _job_line(event: str, job: Job, reason: str | None = None) -> Line:
    facts: dict[str, Value] = {
        "jobid": job.jobid,
        "engine": job.engine,
        "files": len(job.files),
        "reason": reason,
    }
    return Line(event, logging.INFO, facts)


def log_event(
    logger: logging.Logger,
    event: str,
    counts: Mapping[str, int],
    level: int = logging.INFO,
    **facts: Value,
) -> None:
    """One line for ``event`` with its ``facts`` (None ones left out) and the run's ``counts``."""
    known = {key: value for key, value in facts.items() if value is not None}
    shown = "".join(f" {key}={value}" for key, value in known.items())
    run = " ".join(f"{state}={count}" for state, count in counts.items())
    record = {"event": event, **known, "counts": dict(counts)}
    logger.log(level, "%s%s | %s", event, shown, run, extra={EVENT_KEY: record})


class JsonLines(logging.Formatter):
    """Each record as one JSON object: time, level, logger, message, and an event's facts."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, EVENT_KEY, {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(log_format: Literal["text", "json"]) -> None:
    """Send every logger's INFO and above (uvicorn's too) to stderr in ``log_format``, except
    the ``CHATTY`` libraries' INFO: one line per event of the run is what the log promises."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
