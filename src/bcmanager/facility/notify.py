"""Notifications: a JSON POST to ``BCM_NOTIFY_URL`` when something a person waits for happens.

Each event is one POST of ``{"event": KIND, "text": "one line", ...facts}``: chat webhooks
(Slack, Mattermost, Rocket.Chat, Teams' workflows) show ``text``, and a program reads the facts.

Sending must never hold the manager up, and a webhook may be down, slow or never answer. So
``notify`` only puts the message in a bounded queue (when full, the oldest is dropped, with a
log line) and returns; one background task sends the queue in order, each message tried
``attempts`` times with exponential backoff and a timeout per try, then dropped with a log
line. Nothing here raises into the caller. ``stop`` gives the queue a few seconds to drain,
then gives up on what is left. A message that must not be lost (a run's ``run_complete``) is
kept on disk by its caller, who is told whether it was sent (``send``'s ``done``) and sends it
again until it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from enum import Enum
from typing import Any

import httpx

from bcmanager.facility.report import RunReport
from bcmanager.paths import shown

log = logging.getLogger(__name__)

ATTEMPTS = 5
FIRST_DELAY = 2.0  # seconds before the second try; doubles each time
LONGEST_DELAY = 120.0
TIMEOUT = 10.0  # seconds one try may take, connecting included
QUEUE_SIZE = 100
DRAIN_SECONDS = 5.0
TEXT_MAX = 500


class EventKind(str, Enum):
    """What happened; the value is the ``event`` field of the POST."""

    SEQUENCING_FINISHED = "run_sequencing_finished"  # MinKNOW wrote its final summary
    RUN_COMPLETE = "run_complete"  # everything is basecalled; the report is written
    FILE_QUARANTINED = "file_quarantined"  # a raw file failed alone and was set aside
    ENGINE_BENCHED = "engine_benched"  # an engine failed every job and gets no work for a while


Sleep = Callable[[float], Awaitable[None]]
# Told, on the loop, whether a message was sent (True) or given up on (False).
Done = Callable[[bool], None]


class Notifier:
    """Sends events to one URL (None: sends nothing) from a background task.

    ``notify`` may be called from the event loop or, once started, from a worker thread."""

    def __init__(
        self,
        url: str | None,
        *,
        attempts: int = ATTEMPTS,
        first_delay: float = FIRST_DELAY,
        longest_delay: float = LONGEST_DELAY,
        timeout: float = TIMEOUT,
        queue_size: int = QUEUE_SIZE,
        sleep: Sleep = asyncio.sleep,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self.attempts = attempts
        self.first_delay = first_delay
        self.longest_delay = longest_delay
        self.timeout = timeout
        self.sleep = sleep
        self.sent = 0  # messages a server accepted
        self.dropped = 0  # messages given up on: the queue was full, or every try failed
        self._queue: deque[tuple[bytes, Done | None]] = deque(maxlen=queue_size)
        self._client = client
        self._own_client = client is None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the sender on the running loop (nothing to do without a URL)."""
        if self.url is None or self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        self._task = asyncio.create_task(self._send_all(), name="notifier")

    async def stop(self, drain_seconds: float = DRAIN_SECONDS) -> None:
        """Wait up to ``drain_seconds`` for the queue to be sent, then give up on the rest."""
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), drain_seconds)
        except TimeoutError:
            left = len(self._queue) + (0 if self._idle.is_set() else 1)
            self.dropped += left
            log.warning("notifications: stopping with %d not sent", left)
        task.cancel()
        await asyncio.wait([task])
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def notify(self, kind: EventKind, text: str, **facts: Any) -> None:
        """Queue one event; returns at once and never raises."""
        self.send(self.message(kind, text, **facts))

    def message(self, kind: EventKind, text: str, **facts: Any) -> bytes | None:
        """The body of one event's POST; None without a URL, or when it cannot be made."""
        if self.url is None:
            return None
        try:
            body = {**_clean(facts), "event": kind.value, "text": _one_line(text)}
            return json.dumps(body, default=str).encode()
        except (TypeError, ValueError, RecursionError) as error:  # a bug of the caller: logged
            log.error("notifications: cannot send %s: %s", kind.value, error)
            return None

    def send(self, data: bytes | None, done: Done | None = None) -> None:
        """Queue a message (as ``message`` made it); ``done`` is told whether it was sent.
        Returns at once and never raises."""
        if data is None or self.url is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        try:
            if self._loop is not None and running is not self._loop:
                self._loop.call_soon_threadsafe(self._enqueue, data, done)
            else:
                self._enqueue(data, done)
        except RuntimeError as error:  # the loop is closed: the manager is going away
            log.warning("notifications: a message not sent (%s)", error)

    def _enqueue(self, data: bytes, done: Done | None) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            log.warning(
                "notifications: queue full (%d), dropped the oldest unsent", self._queue.maxlen
            )
            _, dropped = self._queue.popleft()
            if dropped is not None:
                dropped(False)
        self._queue.append((data, done))
        self._idle.clear()
        self._wake.set()

    async def _send_all(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            data, done = self._queue.popleft()
            try:
                sent = await self._deliver(data)
            except Exception:  # whatever a webhook does, the sender lives on
                self.dropped += 1
                sent = False
                log.exception("notifications: a message could not be sent")
            if done is not None:
                done(sent)

    async def _deliver(self, data: bytes) -> bool:
        assert self._client is not None and self.url is not None
        delay = self.first_delay
        why = ""
        for attempt in range(1, self.attempts + 1):
            try:
                reply = await self._client.post(
                    self.url,
                    content=data,
                    headers={"Content-Type": "application/json"},
                    timeout=self.timeout,
                )
            except httpx.HTTPError as error:
                why = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            else:
                if reply.is_success:
                    self.sent += 1
                    return True
                why = f"HTTP {reply.status_code}"
                if reply.is_client_error and reply.status_code not in (408, 429):
                    break  # the server refuses this message: trying again will not help
            if attempt < self.attempts:
                await self.sleep(delay)
                delay = min(delay * 2, self.longest_delay)
        self.dropped += 1
        log.warning("notifications: gave up on a message after %d tries (%s)", attempt, why)
        return False

    # -- the events ---------------------------------------------------------------------------

    def sequencing_finished(self, run: str) -> None:
        self.notify(
            EventKind.SEQUENCING_FINISHED,
            f"{shown(run)}: sequencing finished, basecalling the rest",
            run=run,
        )

    def run_complete_message(
        self, run: str, report: Mapping[str, Any], report_path: str
    ) -> bytes | None:
        """The headline numbers of ``report`` (as ``report.build_report`` made it)."""
        whole = RunReport.model_validate(report)
        out = whole.basecalled
        facts = {
            "reads": out.reads,
            "bases": out.bases,
            "n50": out.n50,
            "mean_q": out.mean_q,
            "pass_fraction": out.pass_fraction,
            "files_done": whole.files_done,
            "files_quarantined": whole.files_quarantined,
            "duration_seconds": whole.duration_seconds,
            "mixed_models": out.mixed_models,
            "report": report_path,
        }
        headline = [f"{out.reads:,} reads", f"{out.bases / 1e9:.2f} Gb"]
        if out.n50 is not None:
            headline.append(f"N50 {out.n50:,}")
        if out.mean_q is not None:
            headline.append(f"mean Q {out.mean_q:.1f}")
        if out.pass_fraction is not None:
            headline.append(f"{out.pass_fraction:.0%} pass")
        if whole.files_quarantined:
            headline.append(f"{whole.files_quarantined} files quarantined")
        if out.mixed_models:
            headline.append(f"basecalled with {len(out.models)} models")
        return self.message(
            EventKind.RUN_COMPLETE,
            f"{shown(run)} complete: {', '.join(headline)}. Report: {shown(report_path)}",
            run=run,
            **facts,
        )

    def file_quarantined(self, run: str, file: str, reason: str) -> None:
        self.notify(
            EventKind.FILE_QUARANTINED,
            f"{shown(run)}: {shown(file)} quarantined ({reason})",
            run=run,
            file=file,
            reason=reason,
        )

    def engine_benched(self, engine: str, seconds: float, reason: str) -> None:
        self.notify(
            EventKind.ENGINE_BENCHED,
            f"engine {engine} benched for {seconds:.0f} s: {reason}",
            engine=engine,
            seconds=seconds,
            reason=reason,
        )


def _one_line(text: str) -> str:
    line = " ".join(shown(text).split())
    return line if len(line) <= TEXT_MAX else line[: TEXT_MAX - 1] + "…"


def _clean(value: Any) -> Any:
    """``value`` with every string made fit for JSON (a name from disk may hold bytes that are
    not UTF-8)."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, Mapping):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value
