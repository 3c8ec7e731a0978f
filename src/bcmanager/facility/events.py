"""What changed of a run: each run-level change is one of these, made where the change is made.

A run is found, finished (its final summary seen), complete, reported, sealed or not, unsealed,
paused or resumed, given a priority, moved (seen moving, or followed after a restart), or gone,
whole or a raw folder of it. The facility hands each one, through one method
(``Facility.tell``), to every consumer: the log (``line``: one line an event) and the notifier.
So what the log and the webhook say of a run cannot drift from what the facility holds, and a
new kind of change is a new class here, which the type checker makes each consumer decide on.
Like the core's events (``core/events.py``), these are small records, dropped once told.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RunFound:
    """A run not served before: discovery found its first raw folder."""

    run: str
    priority: int


@dataclass(frozen=True, slots=True)
class SealedRunsFound:
    """Sealed runs found (at start-up, mostly): one line for all of them."""

    runs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RunFinished:
    """Sequencing stopped: its final summary is there, and every file it counts was seen."""

    run: str
    summary: str


@dataclass(frozen=True, slots=True)
class RunComplete:
    """Finished, with nothing waiting, pending or leased: its report, command and seal follow."""

    run: str


@dataclass(frozen=True, slots=True)
class RunReported:
    """Its report is written (``report``: its path, in the run's output folder, where
    ``notice`` is kept: the run_complete message for the webhook; None: no webhook)."""

    run: str
    report: str
    notice: bytes | None


@dataclass(frozen=True, slots=True)
class CommandEnded:
    """Its completion command ended (``exit_status``: a number, or why it has none)."""

    run: str
    exit_status: str


@dataclass(frozen=True, slots=True)
class CommandKilled:
    """Its completion command was killed: the manager stops."""

    run: str
    reason: str


@dataclass(frozen=True, slots=True)
class RunSealed:
    """Folded into its seal: its raw folders are no longer read back at start-up."""

    run: str


@dataclass(frozen=True, slots=True)
class NotSealed:
    """Complete, but a folder below it holds raw files its raw folders do not hold settled."""

    run: str
    folder: str
    unaccounted: int


@dataclass(frozen=True, slots=True)
class RunUnsealed:
    """A complete (maybe sealed) run has work again, or must be read back."""

    run: str
    reason: str


@dataclass(frozen=True, slots=True)
class RunPaused:
    run: str


@dataclass(frozen=True, slots=True)
class RunResumed:
    run: str


@dataclass(frozen=True, slots=True)
class PriorityChanged:
    run: str
    priority: int


@dataclass(frozen=True, slots=True)
class RunMoved:
    """Seen moving from ``run`` to ``to`` while served: its output folder follows."""

    run: str
    to: str


@dataclass(frozen=True, slots=True)
class RunFollowed:
    """Found at ``run``, moved from ``moved_from`` while no manager served it: its output
    folder came along."""

    run: str
    moved_from: str


@dataclass(frozen=True, slots=True)
class RawFoldersGone:
    """Raw folders of a run that are gone; the run goes on with the others."""

    run: str
    raw_folders: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RunGone:
    """Every raw folder of the run is gone (or, sealed, its folder): it is dropped."""

    run: str


RunEvent = (
    RunFound
    | SealedRunsFound
    | RunFinished
    | RunComplete
    | RunReported
    | CommandEnded
    | CommandKilled
    | RunSealed
    | NotSealed
    | RunUnsealed
    | RunPaused
    | RunResumed
    | PriorityChanged
    | RunMoved
    | RunFollowed
    | RawFoldersGone
    | RunGone
)

Tell = Callable[[RunEvent], None]
"""Where a run's change goes once made: ``Facility.tell``, the one path to its consumers."""

Fact = str | int | None


def line(event: RunEvent) -> tuple[str, dict[str, Fact]]:
    """The log line of ``event``: its name and its facts (the run's path first)."""
    match event:
        case RunFound(run, priority):
            return "found", {"run": run, "priority": priority}
        case SealedRunsFound(runs):
            return "sealed runs", {"runs": len(runs)}
        case RunFinished(run, summary):
            return "finished", {"run": run, "summary": summary}
        case RunComplete(run):
            return "complete", {"run": run}
        case RunReported(run, report):
            return "report", {"run": run, "report": report}
        case CommandEnded(run, exit_status):
            return "command ended", {"run": run, "exit_status": exit_status}
        case CommandKilled(run, reason):
            return "command killed", {"run": run, "reason": reason}
        case RunSealed(run):
            return "sealed", {"run": run}
        case NotSealed(run, folder, unaccounted):
            return "not sealed", {"run": run, "folder": folder, "unaccounted": unaccounted}
        case RunUnsealed(run, reason):
            return "unsealed", {"run": run, "reason": reason}
        case RunPaused(run):
            return "paused", {"run": run}
        case RunResumed(run):
            return "resumed", {"run": run}
        case PriorityChanged(run, priority):
            return "priority", {"run": run, "priority": priority}
        case RunMoved(run, to):
            return "moved", {"run": run, "to": to}
        case RunFollowed(run, moved_from):
            return "followed", {"run": run, "moved_from": moved_from}
        case RawFoldersGone(run, raw_folders):
            return "raw folders gone", {"run": run, "raw_folders": " ".join(raw_folders)}
        case RunGone(run):
            return "run gone", {"run": run}
