"""Which raw folder the next batch comes from, and how many bytes it holds.

One pool of engines serves every run under a root, and each run's raw folders queue their own
files (a batch never mixes raw folders). When an engine asks for work, the facility offers
this module one ``Queue`` for each raw folder that has pending files, in a run that is not
paused (a paused run is simply not offered); ``choose`` names the folder to lease from and
``batch_bytes`` the batch's byte budget, which ``RunState.lease`` fills with that folder's
oldest files.

Rules:

- Higher priority first, always: a run set above the others takes every engine that asks
  while it has pending files.
- Then a run in its tail: one that finished sequencing (no more files will come) with less
  than one batch per engine left. Its last files go out before other work, so that they run
  at once on many engines and the run ends then, and its budget is what it has left over the
  number of engines, so they end together instead of one engine working through the tail
  while the others have moved on. Each lease lowers what is left, so its batches shrink down
  to one file as it drains. This is also what keeps the facility's own end short: the large
  files of a run that finished early are not left for the last minutes, when one of them on
  a slow engine would hold the end by itself.
- Among equal rank, the folder whose oldest pending file has waited longest. A run's lag is
  that age, so serving the longest wait first keeps every run's lag near the others' instead
  of letting a busy run starve a quiet one; returned and retried files, which keep their
  first arrival, go out before new ones. Ties go to the folder that sorts first, so that the
  same facts give the same choice.
- Batches are sized by bytes, the run's ``batch_bytes``: raw files range from 40 MB to 20 GB,
  and ten of the large ones would hold an engine for hours. The engine's batch size still caps
  the number of files, and a file larger than the budget goes alone.

Theory of operation. The policy sees only what the caller measured (priorities, ages, bytes,
whether more files will come) and holds nothing between calls: it reads no clock and does no
I/O, so a test or a simulation drives it with made-up facts on a virtual clock
(``bench/schedule.py`` runs it beside the original's single queue). It never holds work back:
if any folder is offered, ``choose`` names one, so an engine that asks never idles while a
file waits. The price of a run's tail going first is paid by the others' lag, at most one
batch per engine each time a run ends. Engine speeds are not weighed: an engine asks, and
gets the next batch whatever its speed. A call costs O(folders offered).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Queue:
    """What the policy weighs of one raw folder that has pending files."""

    key: str  # the raw folder's path relative to INPUT_DIR
    priority: int  # the run's priority: higher goes first
    waited: float  # seconds its oldest pending file has waited
    run_pending_bytes: int  # bytes pending in all of its run's raw folders
    run_finished: bool  # the run stopped sequencing: no more files will come
    batch_bytes: int  # the byte budget the run wants for each batch


def choose(queues: Iterable[Queue], engines: int) -> Queue | None:
    """The folder the next batch comes from when ``engines`` engines share the work: highest
    priority, then runs in their tail (``in_tail``), then longest waited, then the first key;
    None when none is offered."""

    def rank(queue: Queue) -> tuple[int, bool, float, str]:
        return (-queue.priority, not in_tail(queue, engines), -queue.waited, queue.key)

    return min(queues, key=rank, default=None)


def in_tail(queue: Queue, engines: int) -> bool:
    """Whether the queue's run finished sequencing with less than one batch per engine left:
    then its last files go out first, spread over the engines."""
    return queue.run_finished and queue.run_pending_bytes < queue.batch_bytes * max(engines, 1)


def batch_bytes(queue: Queue, engines: int) -> int:
    """The byte budget of the next batch from ``queue`` when ``engines`` engines share the
    work: the run's own budget, or, once the run finished with less than one such batch per
    engine left, its pending bytes spread over the engines (at least one byte: the lease
    takes one file whatever its size)."""
    if in_tail(queue, engines):
        return max(1, min(queue.batch_bytes, -(-queue.run_pending_bytes // max(engines, 1))))
    return queue.batch_bytes
