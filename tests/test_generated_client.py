"""A client generated from the committed OpenAPI schema drives a job to DONE on a live server.

This is what a team writing its own agent in another language does: run a generator on
openapi/openapi.json and call the service through what comes out. openapi-python-client stands in
for the generators; the schema's operation ids become its module names, so they are checked too.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from bcmanager.paths import FolderKind, final_fastq_name, job_folder
from conftest import Run, Server

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "openapi" / "openapi.json"
PACKAGE = "bcmanager_client"
# Its tests share one generated package (a module fixture): under xdist they run on one
# worker.
pytestmark = pytest.mark.xdist_group("generated_client")
OPERATIONS = {
    "protocol": {"assign_work", "keep_alive", "complete_job", "heartbeat"},
    "operations": {"ready", "run_status", "metrics", "retry_files", "list_runs"}
    | {"set_run_priority", "pause_run", "resume_run"},
}


@pytest.fixture(scope="module")
def client_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The client package generated into a temporary folder, importable while the tests run."""
    root = tmp_path_factory.mktemp("generated")
    tools = Path(sys.executable).parent
    generated = subprocess.run(
        [
            str(tools / "openapi-python-client"),
            "generate",
            "--path",
            str(SCHEMA),
            "--meta",
            "none",
            "--output-path",
            str(root / PACKAGE),
        ],
        # The generator formats its output with ruff, found on PATH.
        env={**os.environ, "PATH": os.pathsep.join([str(tools), os.environ.get("PATH", "")])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "Warning" not in generated.stdout + generated.stderr, generated.stdout
    sys.path.insert(0, str(root))
    try:
        yield root / PACKAGE
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def generated(module: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{module}")


def operation(tag: str, operation_id: str) -> ModuleType:
    """The generated module for one operation: it has sync(), asyncio() and their _detailed."""
    return generated(f"api.{tag}.{operation_id}")


def test_operations_get_the_names_the_schema_gives_them(client_package: Path) -> None:
    for tag, operations in OPERATIONS.items():
        modules = {path.stem for path in (client_package / "api" / tag).glob("*.py")}
        assert modules == operations | {"__init__"}
    models = generated("models")
    assert {"BCBatch", "KeepaliveReply", "CompletedReply", "HeartbeatReply"} <= set(dir(models))


def test_a_generated_client_drives_a_job_from_assignwork_to_done(
    client_package: Path, run: Run, start_server: Callable[..., Server]
) -> None:
    run.add("sdk_run_0.pod5", read_count=3)
    reads = run.reads["sdk_run_0.pod5"]
    server = start_server()
    models = generated("models")
    client = generated("client").Client(base_url=server.url, raise_on_unexpected_status=True)

    with client:
        assert operation("operations", "ready").sync(client=client).ready is True
        batch = operation("protocol", "assign_work").sync(
            client=client, engineid="sdk-engine", batchsize=0
        )
        assert isinstance(batch, models.BCBatch)
        assert batch.batch == ["sdk_run_0.pod5"]
        job_input = Path(batch.input_dir) / batch.job_input_dir
        assert (job_input / "sdk_run_0.pod5").resolve() == run.input_dir / "sdk_run_0.pod5"

        fastq = Path(batch.output_dir) / batch.job_output_dir / "pass" / "sdk_run_0.fastq"
        fastq.parent.mkdir(parents=True)
        fastq.write_text("".join(f"@{read}\nACGT\n+\n!!!!\n" for read in reads))
        keepalive = operation("protocol", "keep_alive").sync(
            client=client, job_id=batch.jobid, job_state=models.ReportedState.PROCESSING
        )
        assert keepalive.late is False
        completed = operation("protocol", "complete_job").sync(
            client=client, job_id=batch.jobid, job_state=models.CompletionState.DONE
        )
        assert completed.ok is True

        status = operation("operations", "run_status").sync(client=client)
        nothing = operation("protocol", "assign_work").sync(
            client=client, engineid="sdk-engine", batchsize=0
        )
        heartbeat = operation("protocol", "heartbeat").sync(client=client)

    final = run.output_dir / "pass" / final_fastq_name(batch.jobid, "sdk_run_0.fastq")
    assert [line[1:] for line in final.read_text().splitlines()[::4]] == reads
    done = run.input_dir / job_folder(FolderKind.DONE, batch.jobid, "sdk-engine")
    assert [path.name for path in done.iterdir()] == ["sdk_run_0.pod5"]
    assert (status.files.done, status.files.pending, status.files.leased) == (1, 0, 0)
    assert (nothing.jobid, nothing.batch_size, nothing.batch) == ("-1", 0, [])
    assert heartbeat.status == "false"
