"""What a run keeps on disk about itself: its seal, the record of its completion command, and
the mark of its path.

A complete run is sealed: one small JSON file at the top of its output folder holds its file
counts and what it covers: every folder of the run (the run folder and every folder below it
that discovery enters, empty ones included, but those of the runs nested in it, which are
named), each with its modification time and a digest of the names of its raw files, job
folders and folders. A run is sealed only when every raw file below it is one its raw folders
hold done or quarantined, so nothing is waiting or pending below a seal. A restart reads that
file instead of listing, probing and recovering the run's raw files, so a root with hundreds of
finished runs starts in O(runs + their folders), and looks into the runs nested in it as into
any other folder.

The seal holds while every folder it covers holds the raw files, job folders and folders it
held: a folder whose modification time moved is listed and its digest compared, so a change
that is none of these (a log file MinKNOW adds) does not unseal it; a new raw file or folder,
or an operator's retry (which renames a job folder), does, and the run is read from its
folders again. After start-up every sealed run's
folders are listed once in the background and compared whole, so a change that kept the
folders' modification times (a copy that restores them, a clock too coarse) is found too.

The completion command runs at most once per run: its record is written (and fsynced) before
it starts and again with its exit status when it ends. A manager that died while the command
ran finds a record without an exit status at its restart: it says so and does not run it again,
as the command may have done its part already.

A run's ``run_complete`` notice is kept beside them from before its report is written until
the webhook took it, so that neither a webhook that is down nor a crash loses it: a start-up
sends the notices it finds, once each.

Each run folder of a root holds a mark of the path it was last served at, so that a run an
operator moved while no manager watched (stopped, or killed before it saw the move) is found
with its output at the next start: the run folder is where it went, the mark names where it
was, and the output folder is taken along from there.

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
from pathlib import Path, PurePosixPath
from typing import Any

from bcmanager.facility.discovery import look
from bcmanager.paths import COMPLETION_FILE, NOTICE_FILE, RUN_PATH_FILE, SEAL_FILE
from bcmanager.records import fsync_folder, write_record

log = logging.getLogger(__name__)

RECORD_MAX_BYTES = 1024 * 1024
SEAL_FORMAT = "bcmanager-run-seal"
# Version 1 named only the folders on the way to the raw folders, by modification time: a file
# written into any other folder was hidden. Such a seal is not used; the run is read back and
# sealed again.
SEAL_VERSION = 2


@dataclass(frozen=True, slots=True)
class Seal:
    """A complete run, folded: enough to show it and to tell whether it is still complete."""

    run: str
    folders: Mapping[str, int]  # each folder it covers (relative to INPUT_DIR) -> mtime_ns
    digests: Mapping[str, str]  # each folder it covers -> the digest of its names (``look``)
    raw_folders: tuple[str, ...]  # the folders that held raw files
    nested: tuple[str, ...]  # the folders of the runs nested in it
    files: Mapping[str, int]  # files by state
    bytes: Mapping[str, int]  # bytes by state
    final_summary: str | None
    sealed_at: str
    ledger: dict[str, Any] | None = None  # the run's yield ledger (yieldledger.RunYield)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SEAL_FORMAT,
            "version": SEAL_VERSION,
            "run": self.run,
            "folders": dict(self.folders),
            "digests": dict(self.digests),
            "raw_folders": list(self.raw_folders),
            "nested": list(self.nested),
            "files": dict(self.files),
            "bytes": dict(self.bytes),
            "final_summary": self.final_summary,
            "sealed_at": self.sealed_at,
            "ledger": self.ledger,
        }


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def still_holds(root: Path, seal: Seal) -> bool:
    """Whether every folder the seal covers holds the names it held: one stat each, and a
    listing of those whose modification time moved."""
    for path, mtime in seal.folders.items():
        try:
            moved = os.stat(root / path).st_mtime_ns != mtime
            if moved and look(root, path).digest() != seal.digests.get(path):
                return False
        except OSError:
            return False
    return True


def verify(root: Path, seal: Seal) -> bool:
    """Whether every folder the seal covers holds the names it held, each listed whatever its
    modification time says (O(the run's files): in a worker thread)."""
    try:
        return all(look(root, path).digest() == seal.digests.get(path) for path in seal.folders)
    except OSError:
        return False


def read_seal(output: Path, run: str) -> Seal | None:
    data = _read(output / SEAL_FILE)
    if data is None or data.get("version") != SEAL_VERSION:
        return None
    try:
        if data["format"] != SEAL_FORMAT or data["run"] != run:
            raise ValueError("it is the seal of another run")
        seal = Seal(
            run=run,
            folders=_counts(data["folders"]),
            digests=_texts(data["digests"]),
            raw_folders=_paths(data["raw_folders"]),
            nested=_paths(data["nested"]),
            files=_counts(data["files"]),
            bytes=_counts(data["bytes"]),
            final_summary=_optional_text(data["final_summary"]),
            sealed_at=str(data["sealed_at"]),
            ledger=data.get("ledger") if isinstance(data.get("ledger"), dict) else None,
        )
        if set(seal.digests) != set(seal.folders) or not set(seal.raw_folders) <= set(seal.folders):
            raise ValueError("its folders and their digests do not agree")
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


def read_run_path(folder: Path) -> str | None:
    """The path the run in ``folder`` was last served at, as its mark names it; None when
    there is no usable mark (a path that leaves OUTPUT_DIR is none)."""
    record = _read(folder / RUN_PATH_FILE)
    path = None if record is None else record.get("path")
    if not isinstance(path, str):
        return None
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or any(part in (".", "..") for part in parts):
        log.warning("%s: %r is not a run's path; ignored", folder / RUN_PATH_FILE, path)
        return None
    return path


def write_run_path(folder: Path, path: str) -> None:
    _write(folder / RUN_PATH_FILE, {"format": "bcmanager-run-path", "path": path})


def _counts(value: object) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(count, int) and not isinstance(count, bool)
        for key, count in value.items()
    ):
        raise ValueError("counts are not a map of names to whole numbers")
    return dict(value)


def _texts(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(text, str) for key, text in value.items()
    ):
        raise ValueError("digests are not a map of names to text")
    return dict(value)


def _paths(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(path, str) for path in value):
        raise ValueError("folders are not a list of paths")
    return tuple(value)


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
