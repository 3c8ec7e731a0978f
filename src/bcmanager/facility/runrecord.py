"""What a run keeps on disk about itself: its seal, and the record of its completion command.

A complete run is sealed: one small JSON file at the top of its output folder holds its file
counts and the modification times of its folders. A restart reads that file instead of listing,
probing and recovering the run's raw files, so a root with hundreds of finished runs starts in
O(runs). The seal holds only while every folder it names is unchanged: a new raw file, a new raw
folder or an operator's retry changes a folder's modification time, and the run is read from
its folders again (unsealed).

The completion command runs at most once per run: its record is written (and fsynced) before
it starts and again with its exit status when it ends. A manager that died while the command
ran finds a record without an exit status at its restart: it says so and does not run it again,
as the command may have done its part already.

A run's ``run_complete`` notice is kept beside them from before its report is written until
the webhook took it, so that neither a webhook that is down nor a crash loses it: a start-up
sends the notices it finds, once each.

These files are read as untrusted input (bounded size, checked shape); a bad one is as good as
none, and the reason is logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bcmanager.paths import COMPLETION_FILE, NOTICE_FILE, SEAL_FILE
from bcmanager.records import fsync_folder, write_record

log = logging.getLogger(__name__)

RECORD_MAX_BYTES = 1024 * 1024
SEAL_FORMAT = "bcmanager-run-seal"


@dataclass(frozen=True, slots=True)
class Seal:
    """A complete run, folded: enough to show it and to tell whether it is still complete."""

    run: str
    folders: Mapping[str, int]  # each folder of the run (relative to INPUT_DIR) -> mtime_ns
    files: Mapping[str, int]  # files by state
    bytes: Mapping[str, int]  # bytes by state
    final_summary: str | None
    sealed_at: str
    ledger: dict[str, Any] | None = None  # the run's yield ledger (yieldledger.RunYield)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SEAL_FORMAT,
            "version": 1,
            "run": self.run,
            "folders": dict(self.folders),
            "files": dict(self.files),
            "bytes": dict(self.bytes),
            "final_summary": self.final_summary,
            "sealed_at": self.sealed_at,
            "ledger": self.ledger,
        }


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def mtimes(root: Path, folders: list[str]) -> dict[str, int] | None:
    """Each folder's modification time; None when one cannot be read (then nothing is sealed)."""
    found = {}
    for folder in folders:
        try:
            found[folder] = (root / folder).stat().st_mtime_ns
        except OSError:
            return None
    return found


def still_holds(root: Path, seal: Seal) -> bool:
    """Whether every folder the seal names is as it was when the run was sealed."""
    return mtimes(root, list(seal.folders)) == dict(seal.folders)


def read_seal(output: Path, run: str) -> Seal | None:
    data = _read(output / SEAL_FILE)
    if data is None:
        return None
    try:
        if data["format"] != SEAL_FORMAT or data["run"] != run:
            raise ValueError("it is the seal of another run")
        seal = Seal(
            run=run,
            folders=_counts(data["folders"]),
            files=_counts(data["files"]),
            bytes=_counts(data["bytes"]),
            final_summary=_optional_text(data["final_summary"]),
            sealed_at=str(data["sealed_at"]),
            ledger=data.get("ledger") if isinstance(data.get("ledger"), dict) else None,
        )
    except (KeyError, TypeError, ValueError) as error:
        log.warning("%s: not a usable seal (%s); the run is read from its folders", output, error)
        return None
    return seal


def write_seal(output: Path, seal: Seal) -> None:
    _write(output / SEAL_FILE, seal.to_json())


def remove_seal(output: Path) -> None:
    try:
        os.unlink(output / SEAL_FILE)
    except FileNotFoundError:
        return
    fsync_folder(output)


def read_completion(output: Path) -> dict[str, Any] | None:
    return _read(output / COMPLETION_FILE)


def write_completion(output: Path, record: Mapping[str, Any]) -> None:
    _write(output / COMPLETION_FILE, dict(record))


def read_notice(output: Path) -> bytes | None:
    """The run's notice not sent yet, as it is to be posted; None when there is none."""
    data = _read(output / NOTICE_FILE)
    return None if data is None else json.dumps(data).encode()


def write_notice(output: Path, body: bytes) -> None:
    write_record(output, NOTICE_FILE, body.decode(), durable_name=True)


def remove_notice(output: Path, body: bytes) -> None:
    """The webhook took ``body``: its record goes, unless a newer notice replaced it."""
    if read_notice(output) != json.dumps(json.loads(body)).encode():
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(output / NOTICE_FILE)
        fsync_folder(output)


def _counts(value: object) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(count, int) and not isinstance(count, bool)
        for key, count in value.items()
    ):
        raise ValueError("counts are not a map of names to whole numbers")
    return dict(value)


def _optional_text(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError("final_summary is not text")
    return value


def _read(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read(RECORD_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("%s cannot be read (%s)", path, error)
        return None
    if len(data) > RECORD_MAX_BYTES:
        log.warning("%s is larger than %d bytes: not ours", path, RECORD_MAX_BYTES)
        return None
    try:
        value = json.loads(data)
    except ValueError as error:
        log.warning("%s is not JSON (%s)", path, error)
        return None
    if not isinstance(value, dict):
        log.warning("%s is not a JSON object", path)
        return None
    return value


def _write(path: Path, value: dict[str, Any]) -> None:
    """Whole and durably: a crash leaves the old record or the new one."""
    text = json.dumps(value, indent=1, ensure_ascii=False)
    write_record(path.parent, path.name, text, durable_name=True)
