"""Temporary: replaced by the scheduler branch."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Queue:
    key: str
    run: str
    priority: int
    waited: float
    pending_bytes: int
    run_pending_bytes: int
    run_finished: bool
    batch_bytes: int


def choose(queues: Iterable[Queue]) -> Queue | None:
    return max(queues, key=lambda q: (q.priority, q.waited), default=None)


def batch_bytes(queue: Queue, engines: int) -> int:
    if queue.run_finished and queue.run_pending_bytes < engines * queue.batch_bytes:
        return max(1, queue.run_pending_bytes // max(1, engines))
    return queue.batch_bytes
