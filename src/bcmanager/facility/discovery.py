"""Which folders under INPUT_DIR are runs, and which of their folders hold raw files.

Rules:

- A folder named as MinKNOW names a run's folder (``BCM_RUN_FOLDER_PATTERN``, by default
  ``YYYYMMDD_HHMM_<position>_<flow cell>_<hash>``) is a run. Every folder inside it that holds
  raw files itself (``pod5/``, ``pod5_pass/barcode01/``, ``pod5_skip/``, ...) is one of its raw
  folders.
- Elsewhere, a folder that holds raw files itself is a run, its own one raw folder. So INPUT_DIR
  pointed at one run's ``pod5/`` is the run ``.``, served as it always was.
- A symbolic link to a folder outside INPUT_DIR (a raw folder an operator moved to bigger
  storage and linked back) is looked into as the folder it stands for, but no link within
  what it leads to is (so no walk goes in a circle). A link to a folder inside INPUT_DIR is
  not: that folder is found by its own path.
- Never looked into: job folders, bcmanager's temporary and set-aside names, hidden folders,
  other symbolic links, folders named in bytes that are not UTF-8 (the watcher cannot watch
  them; the log names them), folders deeper than ``BCM_DISCOVERY_DEPTH`` below INPUT_DIR, and
  the folders of sealed runs whose seal holds (their raw files need not be listed again), but
  for the runs nested in them.

A raw folder is the unit a batch is made of: a batch never mixes two of them. Discovery only
lists folders (names and entry types, no stat of each file); the raw folders' own scans probe
their files.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from bcmanager.core import scan
from bcmanager.paths import (
    RAW_SUFFIX,
    TEMP_PREFIX,
    is_aside_name,
    is_final_summary_name,
    is_raw_name,
    is_utf8,
    parse_job_folder,
    raw_names_among,
)

HERE = "."  # the path of INPUT_DIR itself, as a run or a raw folder

# For a folder discovery comes to: None to look into it, or, for a sealed run whose seal
# holds, the folders to look into instead of its own (the runs nested in it).
Sealed = Callable[[str], Sequence[str] | None]


@dataclass(frozen=True, slots=True)
class Found:
    """One raw folder and the run it belongs to, both relative to INPUT_DIR; ``linked`` when
    it is reached through a symbolic link (two links may lead to one folder). ``listing``, when
    asked for: what discovery's listing of it found, for its recovery to start from rather
    than list a folder of up to a million entries again."""

    run: str
    raw_folder: str
    linked: bool = False
    listing: scan.InputListing | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Layout:
    """How runs are recognised: the run folder's name, and how deep to look."""

    run_folder: re.Pattern[str]
    depth: int


def join(parent: str, name: str) -> str:
    """A path relative to INPUT_DIR, ``.`` standing for INPUT_DIR itself."""
    return name if parent == HERE else f"{parent}/{name}"


def parent_of(path: str) -> str:
    head, _, _ = path.rpartition("/")
    return head or HERE


def on_the_way(paths: Iterable[str]) -> frozenset[str]:
    """Every folder on the way from INPUT_DIR down to each of ``paths`` (relative to it), them
    included, INPUT_DIR not."""
    folders: set[str] = set()
    for path in paths:
        while path != HERE and path not in folders:
            folders.add(path)
            path = parent_of(path)
    return frozenset(folders)


def named_run(root: Path, text: str) -> str | None:
    """A run named on a command line: as /runs names it ("exp/sample/run", "." for INPUT_DIR),
    or by its absolute path; None when that is not under INPUT_DIR."""
    if os.path.isabs(text):
        return relative(root, Path(text).resolve())
    path = PurePosixPath(text).as_posix()
    return HERE if path in ("", HERE) else path


def looked_into(name: str) -> bool:
    """Whether a folder of this name may hold runs or raw files."""
    return not (
        name.startswith(".")
        or name.startswith(TEMP_PREFIX)
        or is_aside_name(name)
        or parse_job_folder(name) is not None
        or not is_utf8(name)
    )


def discover(
    root: Path,
    layout: Layout,
    sealed: Sealed = lambda path: None,
    below: str = HERE,
    visited: list[str] | None = None,
    summaries: dict[str, str] | None = None,
    *,
    listings: bool = False,
) -> list[Found]:
    """Every raw folder under ``root`` (at or below its folder ``below``), with its run, sorted
    by path. A folder that cannot be read is passed over (the next discovery tries again);
    ``sealed`` says which folders are sealed runs not to enter, and the runs nested in each;
    ``visited`` receives each folder read, ``summaries`` the final summary each holds (by
    folder), so nothing is listed twice. With ``listings``, each raw folder comes with its
    listing (``Found.listing``): a start-up's, whose raw folders are all read back next."""
    walked = [] if visited is None else visited
    found = summaries if summaries is not None else {}
    return sorted(
        _walk(root, layout, sealed, below, walked, found, listings),
        key=lambda each: each.raw_folder,
    )


def classify(
    path: str, holds_raw: bool, layout: Layout, root_name: str, linked: bool = False
) -> Found | None:
    """What the folder at ``path`` is, given whether it holds raw files itself: a raw folder
    (of the run that encloses it, or its own run), or nothing (None)."""
    if not holds_raw:
        return None
    return Found(run_of(path, layout, root_name) or path, path, linked)


def run_of(path: str, layout: Layout, root_name: str) -> str | None:
    """The innermost folder on ``path`` (itself included) named like a run folder; None when
    none is."""
    parts = [] if path == HERE else path.split("/")
    for end in range(len(parts), -1, -1):
        name = parts[end - 1] if end else root_name
        if layout.run_folder.fullmatch(name):
            return "/".join(parts[:end]) or HERE
    return None


def _walk(
    root: Path,
    layout: Layout,
    sealed: Sealed,
    below: str,
    visited: list[str],
    summaries: dict[str, str],
    listings: bool,
) -> Iterator[Found]:
    if below != HERE and not all(looked_into(part) for part in below.split("/")):
        return
    pending = [(below, _through_link(root, below))]
    while pending:
        path, linked = pending.pop()
        nested = sealed(path)
        if nested is not None:
            pending.extend((inner, _through_link(root, inner)) for inner in nested)
            continue
        folder = root if path == HERE else root / path
        deeper = _depth(path) < layout.depth
        try:
            listing, subfolders, links, summary = _look_into(root, folder, deeper, linked)
        except OSError:
            continue
        if summary is not None:
            summaries[path] = summary
        visited.append(path)
        found = classify(path, bool(listing.raw), layout, root.name, linked)
        if found is not None:
            yield replace(found, listing=listing) if listings else found
        pending.extend((join(path, name), linked) for name in subfolders)
        pending.extend((join(path, name), True) for name in links)


def _depth(path: str) -> int:
    return 0 if path == HERE else path.count("/") + 1


def _through_link(root: Path, path: str) -> bool:
    """Whether a folder on the way from ``root`` to ``path`` (it included) is a link."""
    folder = root
    for part in [] if path == HERE else path.split("/"):
        folder = folder / part
        try:
            if stat.S_ISLNK(os.lstat(folder).st_mode):
                return True
        except OSError:
            return False
    return False


def _links_out(root: Path, path: Path) -> bool:
    """Whether ``path`` is a symbolic link to a folder outside ``root`` (and not above it)."""
    try:
        if not stat.S_ISLNK(os.lstat(path).st_mode):
            return False
        target = Path(os.path.realpath(path))
        return target.is_dir() and not (target.is_relative_to(root) or root.is_relative_to(target))
    except (OSError, ValueError):
        return False


@dataclass(frozen=True, slots=True)
class Folder:
    """One folder of a run as its seal records it: its modification time (taken before it was
    listed, so that any later change shows), its raw files, its job folders, and the folders
    in it that discovery enters."""

    path: str
    mtime_ns: int
    raw: list[str]
    job_folders: list[str]
    subfolders: list[str]

    def digest(self) -> str:
        """What the seal compares: a change of raw files, job folders (an operator's retry
        renames one) or folders changes it, nothing else in the folder does."""
        names = "\1".join(
            "\0".join(sorted(each)) for each in (self.raw, self.job_folders, self.subfolders)
        )
        return hashlib.sha256(names.encode("utf-8", "surrogateescape")).hexdigest()


def look(root: Path, path: str) -> Folder:
    """The folder at ``path`` under ``root``, looked at whole (raises OSError)."""
    folder = root if path == HERE else root / path
    mtime = os.stat(folder).st_mtime_ns
    names = os.listdir(folder)
    raw = raw_names_among(names)
    job_folders = [name for name in names if parse_job_folder(name) is not None]
    subfolders = [
        name
        for name in names
        if not is_raw_name(name)
        and looked_into(name)
        and (_is_folder(folder / name) or _links_out(root, folder / name))
    ]
    return Folder(path, mtime, raw, job_folders, subfolders)


def survey(root: Path, layout: Layout, run: str) -> tuple[list[Folder], list[str]]:
    """The folders of ``run`` (the run folder and every folder below it that discovery enters,
    but those of runs nested in it), each looked at whole, and the folders of the runs nested
    in it, which are theirs to seal. What a seal covers. Raises OSError when a folder cannot
    be read (then nothing is sealed)."""
    own: list[Folder] = []
    nested: list[str] = []
    pending = [(run, _through_link(root, run))]
    while pending:
        path, linked = pending.pop()
        folder = look(root, path)
        own.append(folder)
        if _depth(path) >= layout.depth:
            continue
        for name in folder.subfolders:
            sub = join(path, name)
            link = _links_out(root, root / sub)
            if link and linked:
                continue  # no link is followed within what a link leads to
            if (run_of(sub, layout, root.name) or sub) == run:
                pending.append((sub, linked or link))
            else:
                nested.append(sub)
    return own, sorted(nested)


def _look_into(
    root: Path, folder: Path, deeper: bool, linked: bool
) -> tuple[scan.InputListing, list[str], list[str], str | None]:
    """The listing of ``folder`` (it holds raw files when ``raw`` is not empty), the subfolders
    to look into (when ``deeper``), the links to folders outside ``root`` to look into (when
    ``deeper`` and ``folder`` is not reached through a link already), and its final summary.
    One ``scan.list_input``, as a raw folder's recovery lists it: a raw folder holds up to a
    million entries, and at start-up that listing is handed to its recovery (``Found.listing``)
    rather than made twice. Only the few entries it set aside as neither raw files nor job
    folders are looked at one by one (an ``lstat`` for a name that could be a subfolder); a
    name ending as raw files do is never a subfolder, a link or a summary."""
    listing = scan.list_input(folder)
    subfolders: list[str] = []
    links: list[str] = []
    summary = None
    for name in listing.ignored:
        if name.endswith(RAW_SUFFIX):
            continue
        if is_final_summary_name(name):
            summary = summary or str(folder / name)
        elif deeper and looked_into(name):
            if _is_folder(folder / name):
                subfolders.append(name)
            elif not linked and _links_out(root, folder / name):
                links.append(name)
    return listing, subfolders, links, summary


def _is_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def relative(root: Path, folder: str | os.PathLike[str]) -> str | None:
    """``folder`` as a path relative to ``root`` (``.`` for the root), or None outside it."""
    try:
        rel = Path(folder).relative_to(root)
    except ValueError:
        return None
    return rel.as_posix() if rel.parts else HERE
