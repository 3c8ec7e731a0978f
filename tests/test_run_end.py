"""A run's end, against a real ``bcmanager serve``: it completes once every file its final
summary counts is basecalled or quarantined, missing files accounted, never while one is still
being written; its report is written, or tried again until it is; and its ``run_complete``
notice reaches the webhook once, across a kill -9."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import Root, wait_for
from served_root import (
    Served,
    assign,
    basecall,
    complete,
    drain,
    finish,
    half_written,
    record,
    runs,
    summary,
    wait_for_run,
)


class Webhook:
    """A webhook on 127.0.0.1 that refuses (503) while ``refusing`` is set; it keeps the
    events it accepted, and counts those it refused."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.refused: list[dict[str, Any]] = []
        self.refusing = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                refuse = hook.refusing.is_set()
                (hook.refused if refuse else hook.accepted).append(body)
                self.send_response(503 if refuse else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def events(self, kind: str, refused: bool = False) -> list[dict[str, Any]]:
        bodies = self.refused if refused else self.accepted
        return [body for body in bodies if body["event"] == kind]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


@pytest.fixture
def served(root: Root, tmp_path: Path) -> Iterator[Served]:
    serving = Served(root, tmp_path)
    yield serving
    serving.close()


def completion_command(tmp_path: Path) -> tuple[str, Path]:
    """A completion command that notes each run it ran for, and the file it notes them in."""
    ran = tmp_path / "ran.txt"
    script = f"import sys; open({str(ran)!r}, 'a').write(sys.argv[1] + '\\n')"
    return f"{sys.executable} -c {json.dumps(script)} {{run_path}}", ran


def test_a_run_is_not_complete_while_a_file_its_summary_counts_is_still_being_written(
    root: Root, served: Served, tmp_path: Path
) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 2)
    writing = folder / "pod5" / "FAX11111_last.pod5"
    rest = half_written(root, writing)
    summary(folder, files=3)
    path = folder.relative_to(root.input_dir).as_posix()
    out = root.output_dir / path
    command, ran = completion_command(tmp_path)
    server = served.start(BCM_ON_RUN_COMPLETE=command)
    drain(server, root)
    wait_for_run(server, path, 10, "two files done, one waiting", done=2, waiting=1)
    time.sleep(1.0)  # three rescans
    assert runs(server)[path]["phase"] == "finished, basecalling"
    assert not (out / "report.json").exists() and not ran.exists()

    finish(writing, rest)
    wait_for_run(server, path, 10, "the last file", pending=1)
    drain(server, root)
    wait_for(lambda: (out / "bcm-run.json").exists(), 10, "the seal")
    assert runs(server)[path]["phase"] == "complete"
    assert record(out / "report.json")["files_done"] == 3
    assert ran.read_text() == f"{path}\n"


def test_a_run_whose_file_an_operator_moved_away_completes(
    root: Root, served: Served, tmp_path: Path
) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    kept = root.add(folder / "pod5", 3)
    summary(folder, files=3)
    path = folder.relative_to(root.input_dir).as_posix()
    out = root.output_dir / path
    command, ran = completion_command(tmp_path)
    server = served.start(BCM_ON_RUN_COMPLETE=command)
    for _ in range(2):
        batch = assign(server, 1)
        basecall(root, batch)
        assert complete(server, batch["jobid"]).json() == {"ok": True}
    shutil.move(kept[2], tmp_path / kept[2].name)
    wait_for(lambda: runs(server)[path]["phase"] == "complete", 10, "the run complete")
    wait_for(lambda: ran.exists(), 10, "the completion command")
    assert runs(server)[path]["files"]["missing"] == 1
    assert record(out / "report.json")["files_done"] == 2


def test_a_run_whose_summary_counts_a_file_never_seen_completes_after_a_while(
    root: Root, served: Served
) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 2)
    summary(folder, files=3)  # the third was moved away before any manager saw it
    path = folder.relative_to(root.input_dir).as_posix()
    server = served.start(BCM_FINAL_SUMMARY_GRACE="4")
    drain(server, root)
    assert runs(server)[path]["phase"] == "sequencing", "the third file may still come"
    wait_for(lambda: runs(server)[path]["phase"] == "complete", 15, "the run complete")
    assert "1 of the 3 raw files its final summary counts were never seen" in served.log()


def test_a_report_that_could_not_be_written_is_written_later_and_then_announced(
    root: Root, served: Served, webhook: Webhook
) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 2)
    summary(folder)
    out = root.output_dir / folder.relative_to(root.input_dir)
    (out / "report.html").mkdir(parents=True)  # in the way: the report cannot be written
    (out / "report.html" / "keep").write_text("")
    server = served.start(BCM_NOTIFY_URL=webhook.url)
    drain(server, root)
    wait_for(lambda: "could not write its report" in served.log(), 10, "the failed report")
    time.sleep(0.5)
    assert not webhook.events("run_complete") and not (out / "bcm-run.json").exists()

    shutil.rmtree(out / "report.html")
    wait_for(lambda: (out / "report.html").is_file(), 10, "the report written after all")
    wait_for(lambda: webhook.events("run_complete"), 10, "the notice")
    wait_for(lambda: (out / "bcm-run.json").exists(), 10, "the seal")
    time.sleep(0.5)
    assert len(webhook.events("run_complete")) == 1


def test_a_run_complete_notice_survives_a_kill_and_is_sent_once(
    root: Root, served: Served, webhook: Webhook
) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 2)
    summary(folder)
    out = root.output_dir / folder.relative_to(root.input_dir)
    webhook.refusing.set()
    server = served.start(BCM_NOTIFY_URL=webhook.url)
    drain(server, root)
    # The webhook refuses: the notices wait in the sender's queue, retried.
    wait_for(lambda: (out / "report.html").exists(), 10, "the report")
    wait_for(lambda: webhook.refused, 10, "a first try")
    server.kill()
    assert not webhook.accepted

    webhook.refusing.clear()
    server = served.start(BCM_NOTIFY_URL=webhook.url)
    wait_for(lambda: webhook.events("run_complete"), 10, "the notice after the restart")
    wait_for(lambda: (out / "bcm-run.json").exists(), 10, "the seal")
    server.stop()
    server = served.start(BCM_NOTIFY_URL=webhook.url)
    time.sleep(1.0)
    [notice] = webhook.events("run_complete")
    assert notice["run"] == folder.relative_to(root.input_dir).as_posix()
    assert notice["report"] == str(out / "report.html")
