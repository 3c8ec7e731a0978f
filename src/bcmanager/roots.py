"""The run's two roots, checked before a manager takes them: each usable, and the two apart.

A manager started on a folder it cannot use would only fail later, deep in recovery, with a
traceback. One whose roots overlap would mistake its own folders for the run's: with OUTPUT_DIR
inside INPUT_DIR, pass/ and the output folders are unknown entries among the raw files; with
INPUT_DIR inside OUTPUT_DIR, start-up takes the raw folder for an unknown output folder. So
start-up stops first, with one line that names the folder and says why.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bcmanager.paths import RunPaths, shown


class UnusableRoot(ValueError):
    """INPUT_DIR or OUTPUT_DIR cannot hold a run; the message names it and says why."""


def check_roots(paths: RunPaths) -> None:
    """Raise UnusableRoot unless the roots are apart, INPUT_DIR is a folder this user can read
    and write (job folders live there), and OUTPUT_DIR, where it exists already, is one too.
    Changes nothing on disk: a manager that is refused leaves the run as it found it."""
    input_dir, output_dir = paths.input_dir, paths.output_dir
    if input_dir == output_dir:
        raise UnusableRoot(
            f"INPUT_DIR and OUTPUT_DIR are the same folder, {shown(str(input_dir))}: "
            "give the FASTQ a folder of its own"
        )
    for inner, inner_role, outer, outer_role in (
        (output_dir, "OUTPUT_DIR", input_dir, "INPUT_DIR"),
        (input_dir, "INPUT_DIR", output_dir, "OUTPUT_DIR"),
    ):
        if inner.is_relative_to(outer):
            raise UnusableRoot(
                f"{inner_role} {shown(str(inner))} is inside {outer_role} {shown(str(outer))}: "
                "the two must not be nested"
            )
    _check_folder(input_dir, "INPUT_DIR")
    if os.path.lexists(output_dir):
        _check_output(paths)


def make_output_dir(paths: RunPaths) -> None:
    """Create OUTPUT_DIR if it is missing, then check it as ``check_roots`` does."""
    try:
        paths.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UnusableRoot(
            f"OUTPUT_DIR {shown(str(paths.output_dir))} cannot be created: {_reason(error)}"
        ) from None
    _check_output(paths)


def _check_output(paths: RunPaths) -> None:
    _check_folder(paths.output_dir, "OUTPUT_DIR")
    for sub in (paths.pass_dir, paths.fail_dir):
        if os.path.lexists(sub) and not sub.is_dir():
            raise UnusableRoot(f"OUTPUT_DIR {shown(str(sub))} is not a folder: FASTQ goes there")


def _check_folder(folder: Path, role: str) -> None:
    named = f"{role} {shown(str(folder))}"
    try:
        mode = folder.stat().st_mode
    except FileNotFoundError:
        raise UnusableRoot(f"{named} does not exist") from None
    except OSError as error:
        raise UnusableRoot(f"{named} cannot be read: {_reason(error)}") from None
    if not stat.S_ISDIR(mode):
        raise UnusableRoot(f"{named} is not a folder")
    if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
        raise UnusableRoot(
            f"{named} is not readable and writable by this user: bcmanager keeps its job "
            "folders there"
        )


def _reason(error: OSError) -> str:
    return error.strerror or str(error)
