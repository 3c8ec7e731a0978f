"""The record of operator actions: ``OPERATOR.log`` in INPUT_DIR, one JSON object per line.

The run's folders are its database, so the record of who changed a run lives with them: ``ls``
shows it beside the EXCUSED_ folders a retry made, and it outlives the manager and its logs.
Append-only (O_APPEND, never rewritten), fsynced before the action is made (an action whose
line cannot be written is not made); a line says when, who (the kind of token that let the
request in, or "local" for ``bcmanager retry`` on the folders with no manager running, and the
client's address or the local user), what, and which files. Tokens never appear in it.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

OPERATOR_LOG = "OPERATOR.log"


def record(
    input_dir: Path,
    *,
    action: str,
    token: str,
    client: str,
    asked: list[str] | None,
    files: list[str],
    **details: object,
) -> None:
    """Append one action: ``asked`` is what the operator named (None: every file the action
    applies to), ``files`` what it changed, ``details`` the rest (a run's new priority)."""
    line = json.dumps(
        {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "action": action,
            "token": token,
            "client": client,
            "asked": asked,
            "files": files,
            **details,
        },
        ensure_ascii=False,
    )
    descriptor = os.open(
        input_dir / OPERATOR_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
    )
    try:
        os.write(descriptor, (line + "\n").encode("utf-8", "surrogateescape"))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
