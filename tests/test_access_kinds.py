"""On a shared network: TLS by setting, verified by every client; three kinds of access (engine,
operator, read), none opening another; a login cookie for browsers; and OPERATOR.log, the record
of who retried what, in the run's folder. Every test runs a real ``bcmanager serve``; the
certificates are made for the test with the ``openssl`` binary."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bcmanager.audit import OPERATOR_LOG
from bcmanager.cli.check import inspect
from bcmanager.paths import RunPaths
from conftest import Run, Server

ENGINE, OPERATOR, READ = "engine-token-1", "operator-token-2", "read-token-3"
TOKENS = {"BCM_API_TOKEN": ENGINE, "BCM_OPERATOR_TOKEN": OPERATOR, "BCM_READ_TOKEN": READ}
OPENSSL = "/usr/bin/openssl"


def make_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA), and its key."""
    if not Path(OPENSSL).exists():
        pytest.skip("the openssl binary is not installed")
    folder.mkdir(exist_ok=True)
    certificate, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        [
            *(OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1", "-subj", f"/CN={name}"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=CA:TRUE"),
            *("-keyout", str(key), "-out", str(certificate)),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return certificate, key


@pytest.fixture
def tls(tmp_path: Path) -> dict[str, str]:
    certificate, key = make_certificate(tmp_path / "tls", "bcm-test")
    return {"BCM_TLS_CERTFILE": str(certificate), "BCM_TLS_KEYFILE": str(key)}


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without its BCM_ settings, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BCM_")}
    return {**env, **extra}


def bcmanager(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bcmanager", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def agent(server: Server, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    basecaller = [sys.executable, "-m", "bcmanager", "simulate", "basecaller"]
    command = shlex.join(basecaller) + " {input_dir} {output_dir}"
    return bcmanager(
        *("agent", "--manager", server.url, "--engine-id", "gpu-tls", "--until-empty"),
        *("--poll-interval", "0.2", "--give-up-after", "30"),
        env=clean_env(BCM_AGENT_COMMAND=command, **env),
        cwd=cwd,
    )


def quarantine_one(server: Server, headers: dict[str, str]) -> str:
    """Fail one file alone on two engines, which quarantines it; its name."""
    name = ""
    for engine in ("gpu1", "gpu2"):
        batch = httpx.get(
            f"{server.url}/assignwork",
            params={"engineid": engine, "batchsize": 1},
            headers=headers,
            verify=server.verify,
        ).json()
        name = batch["batch"][0]
        completed = httpx.get(
            f"{server.url}/completed",
            params={"job_id": batch["jobid"], "job_state": "FAILED"},
            headers=headers,
            verify=server.verify,
        )
        assert completed.json() == {"ok": True}
    return name


def test_the_agent_basecalls_over_tls_verified_against_the_ca_file(
    run: Run, start_server: Callable[..., Server], tls: dict[str, str], tmp_path: Path
) -> None:
    run.add_many(3)
    server = start_server(BCM_API_TOKEN=ENGINE, **tls)
    assert server.url.startswith("https://")
    done = agent(
        server,
        tmp_path,
        BCM_AGENT_API_TOKEN=ENGINE,
        BCM_AGENT_CA_FILE=tls["BCM_TLS_CERTFILE"],
    )
    assert done.returncode == 0, done.stderr
    assert server.get("/status").json()["files"]["done"] == 3
    # No clear text on the TLS port: a plain HTTP request gets no answer.
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url.replace("https://", "http://") + "/heartbeat", timeout=5)


def test_status_and_retry_use_tls_and_their_tokens(
    run: Run, start_server: Callable[..., Server], tls: dict[str, str], tmp_path: Path
) -> None:
    run.add_many(2)
    server = start_server(**TOKENS, **tls)
    bad = quarantine_one(server, {"Authorization": f"Bearer {ENGINE}"})
    ca = tls["BCM_TLS_CERTFILE"]
    status = bcmanager(
        "status",
        "--url",
        server.url,
        env=clean_env(BCM_CA_FILE=ca, BCM_READ_TOKEN=READ),
        cwd=tmp_path,
    )
    assert status.returncode == 0, status.stdout
    assert "quarantined (1)" in status.stdout and bad in status.stdout
    unauthorized = bcmanager(
        "status", "--url", server.url, env=clean_env(BCM_CA_FILE=ca), cwd=tmp_path
    )
    assert unauthorized.returncode == 1 and "401" in unauthorized.stdout
    retried = bcmanager(
        "retry",
        env=clean_env(
            BCM_INPUT_DIR=str(run.input_dir),
            BCM_OUTPUT_DIR=str(run.output_dir),
            BCM_PORT=str(server.port),
            BCM_CA_FILE=ca,
            BCM_OPERATOR_TOKEN=OPERATOR,
            **{key: tls[key] for key in ("BCM_TLS_CERTFILE", "BCM_TLS_KEYFILE")},
        ),
        cwd=tmp_path,
    )
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.splitlines() == ["1 quarantined file(s) pending again", bad]
    snapshot = httpx.get(
        f"{server.url}/status",
        headers={"Authorization": f"Bearer {READ}"},
        verify=server.verify,
        timeout=10,
    )
    assert snapshot.json()["files"]["failed"] == 0
    assert OPERATOR not in retried.stdout + retried.stderr + server.log.read_text()


def test_a_certificate_from_another_ca_is_refused_by_every_client(
    run: Run, start_server: Callable[..., Server], tls: dict[str, str], tmp_path: Path
) -> None:
    run.add_many(1)
    server = start_server(BCM_API_TOKEN=ENGINE, **tls)
    other_ca, _ = make_certificate(tmp_path / "other", "someone-else")
    refused = agent(server, tmp_path, BCM_AGENT_API_TOKEN=ENGINE, BCM_AGENT_CA_FILE=str(other_ca))
    assert refused.returncode == 2, refused.stderr
    assert "certificate does not verify" in refused.stderr
    assert "BCM_AGENT_CA_FILE" in refused.stderr and ENGINE not in refused.stderr
    status = bcmanager(
        "status", "--url", server.url, env=clean_env(BCM_CA_FILE=str(other_ca)), cwd=tmp_path
    )
    assert status.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in status.stdout
    # Without a CA file the system's CAs are used: a self-signed certificate is refused too.
    default = bcmanager("status", "--url", server.url, env=clean_env(), cwd=tmp_path)
    assert default.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in default.stdout
    assert server.get("/status").json()["files"]["pending"] == 1  # nobody leased anything


def test_serve_names_a_certificate_it_cannot_use_in_one_line(run: Run, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    env = Server(run, tmp_path / "serve.log").env
    env.update(BCM_TLS_CERTFILE=str(missing), BCM_TLS_KEYFILE=str(missing))
    refused = bcmanager("serve", env=env, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "cannot serve TLS" in refused.stderr


ROUTES = {
    "engine": [("GET", "/assignwork?engineid=probe&batchsize=1")],
    "operator": [("POST", "/retry")],
    "read": [
        ("GET", "/status"),
        ("GET", "/metrics"),
        ("GET", "/"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
    ],
    "probe": [("GET", "/heartbeat"), ("GET", "/ready")],
}


def answers(server: Server, token: str | None) -> dict[str, set[int]]:
    """The status codes each kind of route gives a request carrying ``token``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    seen: dict[str, set[int]] = {}
    for kind, routes in ROUTES.items():
        for method, route in routes:
            reply = httpx.request(
                method,
                f"{server.url}{route}",
                headers=headers,
                json={"files": []} if method == "POST" else None,
                verify=server.verify,
                timeout=10,
            )
            seen.setdefault(kind, set()).add(reply.status_code)
    return seen


def test_each_token_opens_its_own_kind_and_no_other(
    run: Run, start_server: Callable[..., Server]
) -> None:
    server = start_server(**TOKENS)
    table = {name: answers(server, token) for name, token in (("none", None), *TOKENS.items())}
    refused = {401}
    assert table == {
        # The page sends a browser without a token to the login form.
        "none": {"engine": refused, "operator": refused, "read": {401, 303}, "probe": {200}},
        "BCM_API_TOKEN": {"engine": {200}, "operator": refused, "read": {401, 303}, "probe": {200}},
        "BCM_OPERATOR_TOKEN": {"engine": refused, "operator": {200}, "read": {200}, "probe": {200}},
        "BCM_READ_TOKEN": {"engine": refused, "operator": refused, "read": {200}, "probe": {200}},
    }


def test_without_an_operator_token_operator_routes_take_the_engine_token(
    run: Run, start_server: Callable[..., Server]
) -> None:
    """Deployments that set only BCM_API_TOKEN keep /retry guarded as before; reads stay open."""
    server = start_server(BCM_API_TOKEN=ENGINE)
    table = {name: answers(server, token) for name, token in (("none", None), ("engine", ENGINE))}
    assert table["none"] == {"engine": {401}, "operator": {401}, "read": {200}, "probe": {200}}
    assert table["engine"] == {"engine": {200}, "operator": {200}, "read": {200}, "probe": {200}}


def test_the_login_form_trades_the_read_token_for_an_httponly_cookie_that_only_reads(
    run: Run, start_server: Callable[..., Server]
) -> None:
    server = start_server(**TOKENS)
    for wrong in ("", "guess", ENGINE):
        refused = httpx.post(f"{server.url}/login", data={"token": wrong}, timeout=10)
        assert refused.status_code == 401 and "set-cookie" not in refused.headers
    login = httpx.post(f"{server.url}/login", data={"token": READ}, timeout=10)
    assert login.status_code == 303 and login.headers["location"] == "./"
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert READ not in cookie
    with httpx.Client(base_url=server.url, cookies=login.cookies, timeout=10) as browser:
        assert browser.get("/").status_code == 200
        assert browser.get("/status").json()["files"]["pending"] == 0
        assert browser.get("/openapi.json").status_code == 200
        assert browser.post("/retry", json={"files": []}).status_code == 401
        assert browser.get("/assignwork?engineid=x&batchsize=1").status_code == 401
    forged = httpx.get(f"{server.url}/status", cookies={"bcm_read": READ}, timeout=10)
    assert forged.status_code == 401


def test_retries_are_recorded_in_operator_log_with_who_what_and_which_files(
    run: Run, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    run.add_many(3)
    server = start_server(**TOKENS)
    bad = quarantine_one(server, {"Authorization": f"Bearer {ENGINE}"})
    log = run.input_dir / OPERATOR_LOG
    for token in (ENGINE, READ):
        refused = httpx.post(
            f"{server.url}/retry",
            json={"files": None},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert refused.status_code == 401
    assert not log.exists()
    sent = httpx.post(
        f"{server.url}/retry", json={"files": None}, headers={"Authorization": f"Bearer {OPERATOR}"}
    )
    assert sent.json() == {"retried": [bad]}
    server.stop()
    # With no manager running, `bcmanager retry` changes the folders itself: recorded as local.
    nothing = bcmanager(
        "retry",
        "never-there.pod5",
        env=clean_env(BCM_INPUT_DIR=str(run.input_dir), BCM_OUTPUT_DIR=str(run.output_dir)),
        cwd=tmp_path,
    )
    assert nothing.returncode == 0, nothing.stderr
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [
        {key: line[key] for key in ("action", "token", "asked", "files")} for line in lines
    ] == [
        {"action": "retry", "token": "operator", "asked": None, "files": [bad]},
        {"action": "retry", "token": "local", "asked": ["never-there.pod5"], "files": []},
    ]
    assert lines[0]["client"] == "127.0.0.1" and "@" in lines[1]["client"]
    assert all(token not in log.read_text() for token in TOKENS.values())
    excused = [path.name for path in run.input_dir.iterdir() if path.name.startswith("EXCUSED_")]
    assert len(excused) == 2 and OPERATOR_LOG in os.listdir(run.input_dir)
    report = inspect(RunPaths(run.input_dir, run.output_dir))
    assert report.failures == [], [str(problem) for problem in report.failures]
