"""``bcmanager runs`` against a real server on 127.0.0.1 that keeps the routes' contract: the
list and each change printed as a table, the right token sent, and the exit codes (0 done, 1
refused or unknown run, 2 usage)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

from bcmanager.cli import main
from bcmanager.cli.runs import duration
from bcmanager.sim.sequencer import SAMPLE_RATE, write_pod5
from conftest import Run, Server, real_server

READ, OPERATOR, ENGINE = "read-secret", "operator-secret", "engine-secret"
A = "PROJ_A/s1/20261124_1200_1A_PAO12345_abcdef12"
B = "PROJ_B/s2/20261124_1300_2B_PAO67890_12345678"


class Change(BaseModel):
    run: str
    priority: int | None = None


class Facility:
    """The manager's side of the contract, with two runs, remembering the tokens it was sent."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {
            A: {
                **{"path": A, "phase": "sequencing", "priority": 10, "paused": False},
                "files": {"waiting": 1, "pending": 12, "leased": 4, "done": 230, "failed": 1},
                **{"lag_seconds": 185.4, "bytes": {"pending": 10**9}},
            },
            B: {
                **{"path": B, "phase": "complete", "priority": 0, "paused": False},
                **{"files": {"done": 2000}, "lag_seconds": None},
            },
        }
        self.tokens: list[str] = []
        self.app = FastAPI()
        self.app.get("/runs")(self.listing)
        for action in ("priority", "pause", "resume"):
            self.app.post(f"/runs/{action}")(self.changer(action))

    def allow(self, request: Request, *tokens: str) -> None:
        given = request.headers.get("authorization", "")
        self.tokens.append(given)
        if given not in {f"Bearer {token}" for token in tokens}:
            raise HTTPException(401, "a token is required")

    def listing(self, request: Request) -> dict[str, Any]:
        self.allow(request, READ, OPERATOR)
        return {"runs": list(self.runs.values())}

    def changer(self, action: str) -> Any:
        def change(request: Request, body: Change) -> dict[str, Any]:
            self.allow(request, OPERATOR)
            if body.run not in self.runs:
                raise HTTPException(404, f"no run {body.run!r}")
            run = self.runs[body.run]
            if action == "priority":
                run["priority"] = body.priority
            else:
                run["paused"] = action == "pause"
            return run

        return change


@pytest.fixture
def facility(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Facility, str]]:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for name in ("READ_TOKEN", "OPERATOR_TOKEN", "API_TOKEN", "CA_FILE"):
        monkeypatch.delenv(f"BCM_{name}", raising=False)
    monkeypatch.setenv("BCM_READ_TOKEN", READ)
    monkeypatch.setenv("BCM_OPERATOR_TOKEN", OPERATOR)
    monkeypatch.setenv("BCM_API_TOKEN", ENGINE)
    served = Facility()
    with real_server(served.app) as url:
        yield served, url


def runs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["runs", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_list_is_a_table_read_with_the_read_token(
    facility: tuple[Facility, str], capsys: pytest.CaptureFixture[str]
) -> None:
    served, url = facility

    code, out, err = runs(capsys, "--url", url)

    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{'RUN':{len(A)}}  PHASE       PRIORITY  PAUSED  PENDING  LEASED  DONE  QUARANTINED  LAG",
        f"{A}  sequencing        10  -            12       4   230            1  3m05s",
        f"{B}  complete           0  -             0       0  2000            0  -",
    ]
    assert served.tokens == [f"Bearer {READ}"]
    assert runs(capsys, "list", "--url", url)[1] == out  # "list" is the default


def test_priority_pause_and_resume_change_the_run_with_the_operator_token(
    facility: tuple[Facility, str], capsys: pytest.CaptureFixture[str]
) -> None:
    served, url = facility

    code, out, err = runs(capsys, "--url", url, "priority", B, "25")
    assert (code, err) == (0, "")
    assert out.splitlines()[1].split() == [B, "complete", "25", "-", "0", "0", "2000", "0", "-"]
    assert served.runs[B]["priority"] == 25

    code, out, _ = runs(capsys, "pause", A, "--url", url)  # flags after the action too
    assert code == 0 and out.splitlines()[1].split()[3] == "paused"
    assert served.runs[A]["paused"] is True
    code, out, _ = runs(capsys, "resume", A, "--url", url)
    assert code == 0 and out.splitlines()[1].split()[3] == "-"
    assert served.runs[A]["paused"] is False

    assert served.tokens == [f"Bearer {OPERATOR}"] * 3


def test_an_unknown_run_exits_1_saying_what_the_manager_said(
    facility: tuple[Facility, str], capsys: pytest.CaptureFixture[str]
) -> None:
    served, url = facility
    before = {path: dict(run) for path, run in served.runs.items()}

    code, out, err = runs(capsys, "--url", url, "pause", "PROJ_C/nothing")

    assert (code, out) == (1, "")
    assert err == "bcmanager runs: the manager said 404: no run 'PROJ_C/nothing'\n"
    assert served.runs == before


def test_a_missing_token_is_refused_and_exits_1(
    facility: tuple[Facility, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served, url = facility
    monkeypatch.delenv("BCM_OPERATOR_TOKEN")

    # The engine token is what a manager without an operator token takes: this one refuses it.
    code, _, err = runs(capsys, "--url", url, "priority", A, "1")

    assert code == 1 and "401: a token is required" in err
    assert served.tokens == [f"Bearer {ENGINE}"] and served.runs[A]["priority"] == 10


@pytest.mark.parametrize(
    "argv",
    [
        ["priority", A, "high"],
        ["priority", A],
        ["pause"],
        ["frobnicate", A],
        ["resume", A, "extra"],
    ],
)
def test_a_bad_command_line_exits_2_and_calls_nothing(
    facility: tuple[Facility, str], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    served, url = facility
    with pytest.raises(SystemExit) as exited:
        main(["runs", "--url", url, *argv])
    assert exited.value.code == 2
    assert "usage: bcmanager" in capsys.readouterr().err
    assert served.tokens == []


def test_an_unreachable_manager_exits_1(
    facility: tuple[Facility, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = runs(capsys, "--url", "127.0.0.1:1")
    assert code == 1 and "cannot reach the manager at http://127.0.0.1:1/runs" in err


def test_a_reply_outside_the_contract_exits_1(
    facility: tuple[Facility, str], capsys: pytest.CaptureFixture[str]
) -> None:
    served, url = facility
    served.runs[A]["priority"] = "high"
    code, out, err = runs(capsys, "--url", url)
    assert (code, out) == (1, "")
    assert "answered" in err and "priority" in err


def test_names_that_would_drive_a_terminal_are_printed_escaped(
    facility: tuple[Facility, str], capsys: pytest.CaptureFixture[str]
) -> None:
    served, url = facility
    odd = "PROJ_\x1b[2Jodd/pod5"
    served.runs = {odd: {**served.runs[B], "path": odd}}
    code, out, _ = runs(capsys, "--url", url)
    assert code == 0
    assert "\x1b" not in out and "PROJ_\\x1b[2Jodd/pod5" in out


def test_a_real_runs_command_exits_0_with_the_table(facility: tuple[Facility, str]) -> None:
    served, url = facility
    shown = subprocess.run(
        [sys.executable, "-m", "bcmanager", "runs", "--url", f"{url}/runs"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[2].startswith(B)
    assert served.tokens == [f"Bearer {READ}"]


def test_lags_read_as_people_say_them() -> None:
    assert [duration(s) for s in (None, 0, 44.6, 60, 185, 3600, 7380, 90000)] == [
        *("-", "0s", "45s", "1m00s", "3m05s"),
        *("1h00m", "2h03m", "1d01h"),
    ]


def test_against_a_real_manager_of_a_root_each_run_gets_its_rule_and_the_operator_a_say(
    run: Run, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """``bcmanager serve`` on a root of two runs with a runs file: each run's batches carry its
    own rule's settings and what its POD5 files say, and ``bcmanager runs`` lists and changes
    the runs on it."""
    for path in (A, B):
        (run.input_dir / path / "pod5").mkdir(parents=True)
        for index in range(2):
            write_pod5(run.input_dir / path / "pod5" / f"{index}.pod5", 1, seed=index)
    runs_file = tmp_path / "runs.toml"
    runs_file.write_text(
        '[defaults]\nmodel = "hac@v5"\n'
        '[[run]]\nmatch = "PROJ_A/**"\npriority = 10\nmodel = "sup@v5"\nmodified_bases = "6mA"\n'
    )
    server = start_server(BCM_RUNS_FILE=str(runs_file), BCM_OPERATOR_TOKEN=OPERATOR)
    env = {**os.environ, "BCM_OPERATOR_TOKEN": OPERATOR}

    def runs_command(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bcmanager", "runs", "--url", server.url, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=env,
        )

    listed = runs_command()
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert sorted((row[0], row[2], row[4]) for row in rows) == [(A, "10", "2"), (B, "0", "2")]

    first = server.get("/assignwork", engineid="gpu0", batchsize=10).json()
    keys = ("run_path", "priority", "model", "modified_bases", "sample_rate", "sequencing_kit")
    assert [first[key] for key in keys] == [A, 10, "sup@v5", "6mA", SAMPLE_RATE, "SQK-LSK114"]

    paused = runs_command("pause", B)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.splitlines()[1].split()[:4] == [B, "sequencing", "0", "paused"]
    assert server.get("/assignwork", engineid="gpu1", batchsize=10).json()["batch_size"] == 0
    assert runs_command("resume", B).returncode == 0
    assert runs_command("priority", B, "20").stdout.splitlines()[1].split()[2] == "20"
    second = server.get("/assignwork", engineid="gpu1", batchsize=10).json()
    assert [second[key] for key in keys] == [B, 20, "hac@v5", "", SAMPLE_RATE, "SQK-LSK114"]

    unknown = runs_command("pause", "PROJ_C/none")
    assert unknown.returncode == 1 and "404" in unknown.stderr and unknown.stdout == ""
