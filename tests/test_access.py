"""Who may drive the run, and what may be offered: the bearer token of the engine routes, the
refusal to serve beyond loopback unprotected, and raw files that are symlinks or odd entries.
The three kinds of access, TLS and the record of operator actions: test_access_kinds.py."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bcmanager.cli.serve import exposure_refusal
from bcmanager.core.manager import Manager
from bcmanager.http import access as access_module
from conftest import Run, Server, serving, tree

TOKEN = "s3cret-token-of-the-site"
ENGINE_ROUTES = [
    ("/assignwork", {"engineid": "gpu1", "batchsize": "1"}),
    ("/keepalive", {"job_id": "{jobid}", "job_state": "PROCESSING"}),
    ("/completed", {"job_id": "{jobid}", "job_state": "STOPPED"}),
]
BAD_HEADERS = [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": "Bearer "},
]


async def leased_job(client: httpx.AsyncClient) -> str:
    reply = await client.get(
        "/assignwork",
        params={"engineid": "gpu0", "batchsize": 1},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    jobid: str = reply.json()["jobid"]
    return jobid


@pytest.mark.parametrize("headers", BAD_HEADERS, ids=lambda h: h.get("Authorization", "none"))
@pytest.mark.parametrize(("route", "params"), ENGINE_ROUTES, ids=lambda v: str(v)[:12])
async def test_engine_routes_refuse_a_missing_or_wrong_token_and_change_nothing(
    run: Run, route: str, params: dict[str, str], headers: dict[str, str]
) -> None:
    run.add_many(2)
    async with serving(Manager(run.settings(api_token=TOKEN))) as client:
        jobid = await leased_job(client)
        before = tree(run.input_dir), tree(run.output_dir)
        filled = {key: value.replace("{jobid}", jobid) for key, value in params.items()}
        refused = await client.get(route, params=filled, headers=headers)
        after = tree(run.input_dir), tree(run.output_dir)
        allowed = await client.get(
            route, params=filled, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/json"
    assert refused.headers["www-authenticate"] == "Bearer"
    assert "Bearer" in refused.json()["detail"]
    assert after == before
    assert allowed.status_code == 200


async def test_without_a_token_the_engine_routes_are_open(run: Run) -> None:
    run.add_many(1)
    async with serving(Manager(run.settings())) as client:
        batch = await client.get("/assignwork", params={"engineid": "gpu1", "batchsize": 1})
        jobid = batch.json()["jobid"]
        stray = {"Authorization": "Bearer anything"}
        keep = await client.get(
            "/keepalive", params={"job_id": jobid, "job_state": "ASSIGNED"}, headers=stray
        )
        done = await client.get("/completed", params={"job_id": jobid, "job_state": "FAILED"})
    assert batch.json()["batch_size"] == 1
    assert keep.json() == {"late": False} and done.json() == {"ok": True}


@pytest.mark.parametrize("route", ["/heartbeat", "/ready", "/status", "/docs", "/openapi.json"])
async def test_probes_status_and_docs_stay_open_with_a_token(run: Run, route: str) -> None:
    async with serving(Manager(run.settings(api_token=TOKEN))) as client:
        reply = await client.get(route)
    assert reply.status_code == 200


async def test_the_token_is_compared_in_constant_time(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = access_module.secrets.compare_digest

    def spy(given: bytes, expected: bytes) -> bool:
        compared.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(access_module.secrets, "compare_digest", spy)
    async with serving(Manager(run.settings(api_token=TOKEN))) as client:
        await client.get(
            "/keepalive",
            params={"job_id": "1", "job_state": "ASSIGNED"},
            headers={"Authorization": "Bearer guess"},
        )
    assert compared == [(b"guess", TOKEN.encode())]


@pytest.mark.parametrize(
    ("host", "token", "tls", "trusted", "refused"),
    [
        ("127.0.0.1", None, False, False, False),
        ("::1", None, False, False, False),
        ("localhost", None, False, False, False),
        ("0.0.0.0", None, False, False, True),
        ("::", None, False, False, True),
        ("10.1.2.3", None, False, False, True),
        ("gpu-head.cluster", None, False, False, True),
        ("0.0.0.0", TOKEN, False, False, True),  # a token in clear text is anyone's token
        ("0.0.0.0", None, True, False, True),  # TLS alone: anyone can still lease work
        ("0.0.0.0", TOKEN, True, False, False),
        ("0.0.0.0", "", True, False, True),  # BCM_API_TOKEN= (empty, as in .env.example)
        ("0.0.0.0", None, False, True, False),  # the operator says the network is trusted
    ],
)
def test_serving_beyond_loopback_needs_tls_and_a_token_or_a_trusted_network(
    run: Run, host: str, token: str | None, tls: bool, trusted: bool, refused: bool
) -> None:
    files = {"tls_certfile": "cert.pem", "tls_keyfile": "key.pem"} if tls else {}
    settings = run.settings(host=host, api_token=token, trusted_network=trusted, **files)
    refusal = exposure_refusal(settings)
    assert (refusal is not None) == refused
    if refusal:
        assert host in refusal and "BCM_TRUSTED_NETWORK" in refusal
        assert ("BCM_API_TOKEN" in refusal) == (not token)
        assert ("BCM_TLS_CERTFILE" in refusal) == (not tls)


def test_a_real_server_beyond_loopback_without_tls_refuses_to_start_in_one_line(
    run: Run, tmp_path: Path
) -> None:
    run.add_many(1)
    before = tree(run.input_dir)
    server = Server(run, tmp_path / "serve.log", BCM_HOST="0.0.0.0", BCM_API_TOKEN=TOKEN)
    refused = subprocess.run(
        [sys.executable, "-m", "bcmanager", "serve"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2
    lines = refused.stderr.splitlines()
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0 without TLS" in lines[0]
    assert TOKEN not in refused.stdout + refused.stderr
    assert tree(run.input_dir) == before


def test_a_real_server_on_a_trusted_network_starts_without_tls(
    run: Run, start_server: Callable[..., Server]
) -> None:
    server = start_server(BCM_HOST="0.0.0.0", BCM_TRUSTED_NETWORK="true")
    assert server.get("/heartbeat").status_code == 200


async def test_a_real_server_with_a_token_needs_it(
    run: Run, start_server: Callable[..., Server]
) -> None:
    run.add_many(1)
    server = start_server(BCM_API_TOKEN=TOKEN)
    refused = server.get("/assignwork", engineid="gpu1", batchsize=1)
    allowed = httpx.get(
        f"{server.url}/assignwork",
        params={"engineid": "gpu1", "batchsize": 1},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert refused.status_code == 401 and allowed.json()["batch_size"] == 1


def test_the_agent_sends_the_token_from_its_environment(
    run: Run, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    run.add_many(3)
    server = start_server(BCM_API_TOKEN=TOKEN)
    env = {key: value for key, value in os.environ.items() if not key.startswith("BCM_")}
    env["BCM_AGENT_API_TOKEN"] = TOKEN
    basecaller = [sys.executable, "-m", "bcmanager", "simulate", "basecaller"]
    env["BCM_AGENT_COMMAND"] = shlex.join(basecaller) + " {input_dir} {output_dir}"
    agent = subprocess.run(
        [
            *(sys.executable, "-m", "bcmanager", "agent", "--manager", server.url),
            *("--engine-id", "gpu-token", "--until-empty", "--poll-interval", "0.2"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert agent.returncode == 0, agent.stderr
    assert server.get("/status").json()["files"]["done"] == 3
    assert TOKEN not in agent.stdout + agent.stderr


def hostile_entries(run: Run, outside: Path) -> None:
    """Entries named like raw files that are not raw files of INPUT_DIR."""
    outside.mkdir()
    run.add("real.pod5")
    target = outside / "secret.pod5"
    target.write_bytes((run.input_dir / "real.pod5").read_bytes())  # a complete POD5 file
    (run.input_dir / "linked.pod5").symlink_to(target)
    (run.input_dir / "relative.pod5").symlink_to("../outside/secret.pod5")
    (run.input_dir / "dangling.pod5").symlink_to("nowhere.pod5")
    (run.input_dir / "folder.pod5").mkdir()
    os.mkfifo(run.input_dir / "fifo.pod5")
    (run.input_dir / ".hidden.pod5").write_bytes(target.read_bytes())


async def test_symlinks_and_odd_entries_are_never_offered(run: Run, tmp_path: Path) -> None:
    hostile_entries(run, tmp_path / "outside")
    # An ASSIGNED_ folder, as a crash might leave one, holding entries that are no raw file's
    # link: after its lease runs out only the real file may be offered.
    planted = run.input_dir / "ASSIGNED_7_gpu9"
    planted.mkdir()
    (planted / "real.pod5").symlink_to("../real.pod5")
    (planted / ".bcmanager.lock").symlink_to("../.bcmanager.lock")
    (planted / "passwd").symlink_to("/etc/passwd")
    async with serving(Manager(run.settings(report_back_period=1, rescan_interval=0.1))) as client:
        # Symlinks made while the manager runs reach it through the watcher and the rescan.
        (run.input_dir / "late-link.pod5").symlink_to(tmp_path / "outside" / "secret.pod5")
        offered: list[str] = []
        for _ in range(40):
            reply = await client.get("/assignwork", params={"engineid": "gpu1", "batchsize": 50})
            batch = reply.json()
            offered += batch["batch"]
            if batch["batch"]:  # done at once, so its lease cannot run out and offer it again
                run.basecall(batch["job_output_dir"], batch["batch"])
                for link in (run.input_dir / batch["job_input_dir"]).iterdir():
                    assert link.resolve().parent == run.input_dir.resolve()
                done = {"job_id": batch["jobid"], "job_state": "DONE"}
                assert (await client.get("/completed", params=done)).json() == {"ok": True}
            await asyncio.sleep(0.05)
        status = (await client.get("/status")).json()
    assert offered == ["real.pod5"]
    assert status["files"] == {
        "waiting": 0,
        "pending": 0,
        "leased": 0,
        "done": 1,
        "failed": 0,
        "missing": 0,
    }
