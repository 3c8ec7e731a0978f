"""Notifications against a real HTTP server on 127.0.0.1: retried with backoff when it fails,
given up after a bounded number of tries, and never holding anything up when the server is
slow or never answers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bcmanager.facility.notify import EventKind, Notifier
from bcmanager.facility.report import build_report
from bcmanager.facility.yieldledger import JobStats, RunYield
from bcmanager.settings import Settings
from conftest import job_stats, known_reads


class Webhook:
    """A chat webhook stand-in: answers each POST with the next of ``statuses`` (200 once they
    run out), after ``delay`` seconds, or never (``hang``) until the test ends."""

    def __init__(self, statuses: list[int], delay: float, hang: bool) -> None:
        self.statuses = statuses
        self.delay = delay
        self.hang = hang
        self.bodies: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append(json.loads(body))
                hook.times.append(time.monotonic())
                if hook.hang:
                    hook.release.wait(30)
                    return
                time.sleep(hook.delay)
                self.send_response(hook.statuses.pop(0) if hook.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test reads what arrived instead."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Callable[..., Webhook]]:
    made: list[Webhook] = []

    def make(statuses: tuple[int, ...] = (), delay: float = 0.0, hang: bool = False) -> Webhook:
        made.append(Webhook(list(statuses), delay, hang))
        return made[-1]

    yield make
    for hook in made:
        hook.close()


class Waits:
    """A sleep that returns at once and remembers how long it was asked to wait."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await asyncio.sleep(0)


async def test_a_failing_server_gets_the_message_again_with_growing_waits(
    webhook: Callable[..., Webhook],
) -> None:
    hook = webhook(statuses=(500, 503, 502))
    waits = Waits()
    notifier = Notifier(hook.url, attempts=5, first_delay=2.0, longest_delay=5.0, sleep=waits)
    notifier.start()
    notifier.file_quarantined("PAO12345/run1", "a.pod5", "exit 1:\nboom")
    await notifier.stop(drain_seconds=10)
    assert waits.asked == [2.0, 4.0, 5.0]
    assert len(hook.bodies) == 4
    assert all(body == hook.bodies[0] for body in hook.bodies)
    assert hook.bodies[0] == {
        "event": "file_quarantined",
        "text": "PAO12345/run1: a.pod5 quarantined (exit 1: boom)",
        "run": "PAO12345/run1",
        "file": "a.pod5",
        "reason": "exit 1:\nboom",
    }
    assert (notifier.sent, notifier.dropped) == (1, 0)


async def test_a_message_is_given_up_after_its_tries_and_the_next_one_goes(
    webhook: Callable[..., Webhook], caplog: pytest.LogCaptureFixture
) -> None:
    """Real waits, short: 50 ms, then 100 ms between the three tries."""
    hook = webhook(statuses=(500, 500, 500))
    notifier = Notifier(hook.url, attempts=3, first_delay=0.05)
    notifier.start()
    notifier.engine_benched("gpu7", 60, "its last 3 jobs failed")
    notifier.notify(EventKind.SEQUENCING_FINISHED, "second")
    await notifier.stop(drain_seconds=10)
    assert [body["text"] for body in hook.bodies] == [
        "engine gpu7 benched for 60 s: its last 3 jobs failed"
    ] * 3 + ["second"]
    gaps = [later - earlier for earlier, later in zip(hook.times[:2], hook.times[1:3], strict=True)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1
    assert (notifier.sent, notifier.dropped) == (1, 1)
    assert "gave up on a message after 3 tries (HTTP 500)" in caplog.text


async def test_a_refused_message_is_not_tried_again_but_too_many_requests_is(
    webhook: Callable[..., Webhook],
) -> None:
    hook = webhook(statuses=(400, 429))
    waits = Waits()
    notifier = Notifier(hook.url, sleep=waits)
    notifier.start()
    notifier.notify(EventKind.RUN_COMPLETE, "refused")
    notifier.notify(EventKind.RUN_COMPLETE, "later")
    await notifier.stop()
    assert [body["text"] for body in hook.bodies] == ["refused", "later", "later"]
    assert (notifier.sent, notifier.dropped) == (1, 1)


async def _worst_lag(seconds: float) -> float:
    """How late a 10 ms timer fires, at worst, over ``seconds``: the event loop's stalls."""
    worst, end = 0.0, time.monotonic() + seconds
    while time.monotonic() < end:
        before = time.monotonic()
        await asyncio.sleep(0.01)
        worst = max(worst, time.monotonic() - before - 0.01)
    return worst


async def test_a_server_that_never_answers_holds_nothing_up(
    webhook: Callable[..., Webhook],
) -> None:
    hook = webhook(hang=True)
    notifier = Notifier(hook.url, timeout=0.2, attempts=2, first_delay=0.05)
    notifier.start()
    began = time.monotonic()
    for index in range(50):
        notifier.notify(EventKind.FILE_QUARANTINED, f"file {index}")
    assert time.monotonic() - began < 0.05
    assert await _worst_lag(0.6) < 0.1
    began = time.monotonic()
    await notifier.stop(drain_seconds=0.3)
    assert time.monotonic() - began < 1.0
    assert hook.bodies[0]["text"] == "file 0"
    assert (notifier.sent, notifier.dropped) == (0, 50)


async def test_a_slow_server_gets_every_message_in_order(webhook: Callable[..., Webhook]) -> None:
    hook = webhook(delay=0.15)
    notifier = Notifier(hook.url)
    notifier.start()
    began = time.monotonic()
    for index in range(5):
        notifier.notify(EventKind.FILE_QUARANTINED, f"file {index}")
    assert time.monotonic() - began < 0.05
    assert await _worst_lag(0.2) < 0.1
    await notifier.stop(drain_seconds=10)
    assert [body["text"] for body in hook.bodies] == [f"file {index}" for index in range(5)]
    assert notifier.sent == 5


async def test_a_full_queue_drops_the_oldest_with_a_log_line(
    webhook: Callable[..., Webhook], caplog: pytest.LogCaptureFixture
) -> None:
    hook = webhook()
    notifier = Notifier(hook.url, queue_size=3)
    for index in range(5):
        notifier.notify(EventKind.FILE_QUARANTINED, f"file {index}")
    notifier.start()
    await notifier.stop()
    assert [body["text"] for body in hook.bodies] == ["file 2", "file 3", "file 4"]
    assert notifier.dropped == 2
    assert caplog.text.count("queue full (3), dropped the oldest unsent") == 2


async def test_a_worker_thread_may_notify(webhook: Callable[..., Webhook]) -> None:
    hook = webhook()
    notifier = Notifier(hook.url)
    notifier.start()
    await asyncio.to_thread(notifier.sequencing_finished, "PAO12345/run1")
    await asyncio.sleep(0)
    await notifier.stop()
    assert hook.bodies == [
        {
            "event": "run_sequencing_finished",
            "text": "PAO12345/run1: sequencing finished, basecalling the rest",
            "run": "PAO12345/run1",
        }
    ]


async def test_odd_facts_and_no_url_never_raise(
    webhook: Callable[..., Webhook], caplog: pytest.LogCaptureFixture
) -> None:
    silent = Notifier(None)
    silent.start()
    silent.notify(EventKind.RUN_COMPLETE, "nowhere to go")
    await silent.stop()

    hook = webhook()
    notifier = Notifier(hook.url)
    notifier.start()
    looped: list[Any] = []
    looped.append(looped)
    notifier.notify(EventKind.RUN_COMPLETE, "a loop", facts=looped)
    odd = os.fsdecode(b"caf\xe9.pod5")
    notifier.file_quarantined("run", odd, "exit 1")
    notifier.notify(EventKind.RUN_COMPLETE, "a path", where=Path("/data/run"))
    await notifier.stop()
    assert [body["text"] for body in hook.bodies] == [
        "run: caf\\xe9.pod5 quarantined (exit 1)",
        "a path",
    ]
    assert hook.bodies[0]["file"] == "caf\\xe9.pod5"
    assert hook.bodies[1]["where"] == "/data/run"
    assert "cannot send run_complete" in caplog.text


async def test_run_complete_gives_the_headline_and_where_the_report_is(
    webhook: Callable[..., Webhook],
) -> None:
    reads = known_reads(1000, seed=21)
    ledger = RunYield()
    ledger.add(JobStats.model_validate(job_stats(reads)), 1_764_000_000.0)
    report = build_report(
        run="PAO12345/run1",
        output_dir=Path("/data/out/run1"),
        ledger=ledger,
        reads_in={"a.pod5": 1000},
        files_done=1,
        quarantined=[],
        started_at=1_764_000_000.0,
        ended_at=1_764_003_600.0,
        generated_at=1_764_003_600.0,
    )
    hook = webhook()
    notifier = Notifier(hook.url)
    notifier.start()
    notifier.send(
        notifier.run_complete_message("PAO12345/run1", report, "/data/out/run1/report.html")
    )
    await notifier.stop()
    (body,) = hook.bodies
    out = report["basecalled"]
    assert body["event"] == "run_complete"
    assert body["text"] == (
        f"PAO12345/run1 complete: 1,000 reads, {out['bases'] / 1e9:.2f} Gb, "
        f"N50 {out['n50']:,}, mean Q {out['mean_q']:.1f}, {out['pass_fraction']:.0%} pass. "
        "Report: /data/out/run1/report.html"
    )
    assert body["reads"] == 1000 and body["report"] == "/data/out/run1/report.html"
    assert body["files_quarantined"] == 0 and body["mixed_models"] is False


def test_the_url_is_a_setting(tmp_path: Path) -> None:
    def settings(url: str) -> Settings:
        return Settings(input_dir=tmp_path, output_dir=tmp_path / "out", notify_url=url)

    assert settings("").notify_url is None
    assert str(settings("https://chat.example.org/hooks/abc").notify_url) == (
        "https://chat.example.org/hooks/abc"
    )
    with pytest.raises(ValidationError):
        settings("ftp://chat.example.org/hooks/abc")


@pytest.fixture(autouse=True)
def _log_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bcmanager.facility.notify")
