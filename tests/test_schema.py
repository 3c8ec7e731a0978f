"""The committed OpenAPI schema and .env.example match the code."""

from __future__ import annotations

import json
from pathlib import Path

from bcmanager.cli.serve import openapi_schema
from bcmanager.settings import Settings

ROOT = Path(__file__).parent.parent


def test_committed_openapi_matches_the_app() -> None:
    committed = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    served = json.loads(json.dumps(openapi_schema()))
    assert committed == served, "openapi/openapi.json is stale: run `make openapi`"


def test_schema_describes_the_protocol_replies() -> None:
    schema = openapi_schema()
    batch = schema["components"]["schemas"]["BCBatch"]
    assert {"report_back_interval", "jobid", "batch", "batch_size"} <= set(batch["required"])
    assert set(schema["paths"]) >= {"/assignwork", "/keepalive", "/completed", "/heartbeat"}
    operation_ids = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {"assign_work", "keep_alive", "complete_job", "heartbeat"} <= operation_ids


def test_env_example_documents_every_setting() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    documented = {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}
    expected = {f"BCM_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected
