"""The one way an event of a run reaches those who take it in.

Every change of a raw folder's run is an event (``events.py``), and ``Consumers.apply`` hands
each, with the facts the disk gave, to every consumer in turn: progress (what /status and
/metrics read), the log, benching, and a listener (the facility's bookkeeping of its runs).
Nothing else updates them beside a change, so none can drift from the others or from the state
machine. A consumer's verdict is an event too: benching, taking in a failure, may bench its
engine, and that ``Benched`` goes the same way once the failure has reached every consumer.
"""

from __future__ import annotations

from collections.abc import Callable

from bcmanager.core.benching import Benching
from bcmanager.core.events import NO_FACTS, Event, Facts
from bcmanager.core.logs import Line, event_line
from bcmanager.core.progress import Progress

# Told each event after progress, the log and benching took it in.
Listener = Callable[[Event, Facts], None]


class Consumers:
    """Progress, the log (``write`` gets each line), benching and the listener of one run."""

    __slots__ = ("benching", "listener", "progress", "write")

    def __init__(
        self,
        progress: Progress,
        benching: Benching,
        write: Callable[[Line], None],
        listener: Listener | None = None,
    ) -> None:
        self.progress = progress
        self.benching = benching
        self.write = write
        self.listener = listener

    def apply(
        self, event: Event, now: float, facts: Facts = NO_FACTS, *, logged: bool = True
    ) -> None:
        """Hand ``event`` at ``now`` to every consumer; no line for it unless ``logged`` (files
        found at start-up)."""
        self.progress.apply(event, now, facts)
        line = event_line(event, facts) if logged else None
        if line is not None:
            self.write(line)
        verdict = self.benching.apply(event, now, facts)
        if self.listener is not None:
            self.listener(event, facts)
        if verdict is not None:
            self.apply(verdict, now)
