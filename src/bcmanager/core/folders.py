"""Writing the run's folders: each change of a job's state on disk, with one commit point.

Every multi-step change is built so that one atomic rename commits it, and that rename's folder
is fsynced before the change is reported done, so an answer an engine got survives power loss:

- assign:   build ``.bcm-tmp-ASSIGNED_x`` with the symlinks and create ``TMPOUTPUT_x``, then rename
            the temp folder to ``ASSIGNED_x``. Before the rename nothing is leased.
- done:     the account of the job's reads first (``account.py``): the raw files it rejects
            are committed as failed attempts of their own (``set_apart``), the reads files it
            rejects renamed out of the merge's way (``set_aside_reads``), the account written
            as ``ACCOUNT_FILE``. Then rename ``ASSIGNED_x`` to ``DONE_x`` (the commit), move the
            reads files into pass/ and fail/ and rename ``TMPOUTPUT_x`` to ``LOGOUTPUT_x``.
            Start-up rolls the rest forward.
- failed:   rename ``ASSIGNED_x`` to ``FAILED_x`` (an attempt: its files are retried) or to
            ``QUARANTINED_x`` (its one file is set aside), then ``TMPOUTPUT_x`` to
            ``FAILEDOUTPUT_x``. An operator's retry renames a file's one-file ``FAILED_`` and
            ``QUARANTINED_`` folders to ``EXCUSED_``: kept, out of the count. A benched engine's
            failure is committed as ``EXCUSED_`` at once.
- stopped and expired: rename ``ASSIGNED_x`` to a temp name (the commit: its files are no
            longer leased), then discard (stopped) or keep aside as ``EXPIREDOUTPUT_x`` the
            output, and remove the temp folder.

Engines are not trusted. The merge walks the job's own output folder without following a
symlink, moves only regular files named like reads (``paths.merge_target``) and never replaces a
file: a name taken in pass/ or fail/ leaves the newcomer with the logs, reported. A folder set
aside where its name is taken goes under a fresh name (``paths.aside_name``). Nothing an engine
does can make a raw file or a job folder leave INPUT_DIR. pass/ and fail/ may live on another
filesystem: a move across devices copies, fsyncs, renames into place, then removes the source.

What follows a commit point (the "tail") may fail too, on a full or failing disk: the change
stands, the failed tail is remembered and ``finish_tails`` retries it (the manager calls it at
each rescan). Start-up (``recover``) removes temp folders, rolls committed changes forward, and
sets aside output folders that no job folder claims, so a tail is finished even if the manager
died before it retried. Recovery handles each job on its own: what goes wrong with one job is
recorded in ``problems`` and the rest of the run is served. Every call that touches the disk
goes through ``DiskOps``, so tests can inject ENOSPC, EIO or a power cut at any single step.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from enum import Enum
from itertools import chain, count
from pathlib import Path

from bcmanager.core import scan
from bcmanager.paths import (
    ACCOUNT_FILE,
    ATTEMPT_FILE,
    INDEX_SUFFIXES,
    REJECTED_SUFFIX,
    TEMP_PREFIX,
    FolderKind,
    JobFolderName,
    RunPaths,
    aside_name,
    final_fastq_name,
    job_folder,
    merge_target,
    raw_names_among,
    temp_name,
)
from bcmanager.reads.files import is_real_folder, output_entries
from bcmanager.records import write_record

log = logging.getLogger(__name__)


class DiskOps:
    """The filesystem calls that change a run. Subclass to inject faults in tests."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def symlink(self, target: str, link: Path) -> None:
        os.symlink(target, link)

    def rename(self, source: Path, destination: Path) -> None:
        os.rename(source, destination)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def rmtree(self, path: Path) -> None:
        shutil.rmtree(path)

    def copy(self, source: Path, destination: Path) -> None:
        """A new file ``destination`` with the bytes of the regular file ``source``."""
        with open(source, "rb") as reader, open(destination, "xb") as writer:
            shutil.copyfileobj(reader, writer, 1 << 20)

    def fsync(self, path: Path) -> None:
        """Make a file's bytes, or a folder's entries, durable."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _rename_new(ops: DiskOps, source: Path, destination: Path) -> None:
    """Rename, refusing to replace what is there: an existing target means a fact we must keep."""
    if os.path.lexists(destination):
        raise FileExistsError(errno.EEXIST, "refusing to replace", str(destination))
    ops.rename(source, destination)


def _rename_aside(ops: DiskOps, source: Path, wanted: Path) -> Path:
    """Rename to ``wanted``, or to the first free ``aside_name`` of it: nothing is replaced and
    nothing deleted, however often an engine recreates a folder. Returns where it went."""
    target = wanted
    for attempt in count(1):
        if not os.path.lexists(target):
            break
        target = wanted.with_name(aside_name(wanted.name, attempt))
    ops.rename(source, target)
    return target


class Unlinked(OSError):
    """Files set apart from a live job left its ``ASSIGNED_`` folder, and then the disk refused
    the rest: they are in no job folder (pending, as a restart would find them)."""

    def __init__(self, error: OSError, files: tuple[str, ...]) -> None:
        super().__init__(error.errno, error.strerror, error.filename)
        self.files = files


class Tail(str, Enum):
    """What is left to do after a commit point; the value says it in words for the logs."""

    DONE = "move its reads into pass/ and fail/"
    FAILED = "set its output aside"
    EXPIRED = "set its output aside and remove its retired lease"
    DISCARD = "remove its output and its retired or half-built lease"


# Where a released job's output is kept, by the tail that releases it (DISCARD keeps nothing).
KEPT_AS = {Tail.EXPIRED: FolderKind.EXPIREDOUTPUT}


@dataclass(slots=True)
class Recovered:
    """What start-up found on disk, after cleaning up and rolling forward."""

    assigned: list[tuple[JobFolderName, list[str]]] = field(default_factory=list)
    # DONE_, FAILED_ and QUARANTINED_ folders (EXCUSED_ ones are history: not read back).
    ended: list[tuple[JobFolderName, list[str]]] = field(default_factory=list)
    done_by_fastq: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # one line per change made at start-up

    def placed(self) -> list[str]:
        """The raw files recovery gave a state: in a job folder, or with FASTQ already. Read
        from what recovery found, so files a watcher reports later are never among them."""
        recorded = set(self.done_by_fastq)
        for _, files in chain(self.assigned, self.ended):
            recorded.update(files)
        return list(filter(recorded.__contains__, self.raw))


class RunFolders:
    """The job folders of one run.

    ``unfinished`` and ``problems`` are written by the one job's change in flight (a worker
    thread may carry it out) and read by the event loop: single dict operations, atomic in
    CPython, and never two changes of the same job at once (the manager sees to that).
    """

    def __init__(self, paths: RunPaths, ops: DiskOps | None = None) -> None:
        self.paths = paths
        self.ops = ops or DiskOps()
        self.unfinished: dict[str, tuple[str, Tail]] = {}  # jobid -> (engine, tail to retry)
        # What went wrong with one job's folders and is not mended yet, by job id (or by name,
        # for a leftover of no job): a tail that keeps failing, or what recovery could not do.
        self.problems: dict[str, str] = {}

    def prepare(self) -> None:
        """Create OUTPUT_DIR and its pass/ and fail/ if missing."""
        for folder in (self.paths.output_dir, self.paths.pass_dir, self.paths.fail_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # -- assign -----------------------------------------------------------------------------

    def build_job(self, jobid: str, engine: str, files: tuple[str, ...]) -> None:
        """Lease ``files`` on disk, durably; on any error nothing stays and the error is raised."""
        final = self.paths.input_folder(FolderKind.ASSIGNED, jobid, engine)
        building = final.with_name(temp_name(final.name))
        output = self.paths.output_folder(FolderKind.TMPOUTPUT, jobid, engine)
        try:
            self.ops.mkdir(building)
            for name in files:
                self.ops.symlink(os.path.join(os.pardir, name), building / name)
            self.ops.fsync(building)
            self.ops.mkdir(output)
            self.ops.fsync(self.paths.output_dir)
            self._commit(building, final)
        except OSError:
            self._finish(jobid, engine, Tail.DISCARD)
            raise

    # -- end of a job -----------------------------------------------------------------------

    def commit_done(self, jobid: str, engine: str) -> None:
        """Commit with the DONE_ rename (raises if that fails), then merge the output.

        A failure after the commit is logged and retried by ``finish_tails``: the job is done
        either way.
        """
        assigned = self.paths.input_folder(FolderKind.ASSIGNED, jobid, engine)
        self._commit(assigned, assigned.with_name(job_folder(FolderKind.DONE, jobid, engine)))
        self._finish(jobid, engine, Tail.DONE)

    def set_apart(
        self,
        jobid: str,
        engine: str,
        part_id: str,
        files: tuple[str, ...],
        kind: FolderKind,
        account: str,
    ) -> None:
        """Commit files of a live job whose account rejected them as a failed attempt of their
        own: ``TMPOUTPUT_<part>`` holding ``account`` (``ACCOUNT_FILE``: why), their links out
        of ``ASSIGNED_<job>``, then ``FAILED_<part>`` (or QUARANTINED_) built under a temporary
        name and renamed into place: the commit; its output becomes ``FAILEDOUTPUT_<part>``
        after, as any failure's. A crash before the commit leaves the files in no job folder,
        pending again at the next start. An error before it undoes what it can and raises;
        ``Unlinked`` when links had left ``ASSIGNED_<job>`` already: those files are in no job
        folder now, as a restart would find them."""
        assigned = self.paths.input_folder(FolderKind.ASSIGNED, jobid, engine)
        output = self.paths.output_folder(FolderKind.TMPOUTPUT, part_id, engine)
        final = self.paths.input_folder(kind, part_id, engine)
        building = final.with_name(temp_name(final.name))
        removed: list[str] = []
        try:
            self.ops.mkdir(output)
            write_record(output, ACCOUNT_FILE, account)
            self.ops.fsync(self.paths.output_dir)
            for name in files:
                with suppress(FileNotFoundError):  # a report before this one took it out
                    self.ops.unlink(assigned / name)
                removed.append(name)
            self.ops.fsync(assigned)
            self.ops.mkdir(building)
            for name in files:
                self.ops.symlink(os.path.join(os.pardir, name), building / name)
            self.ops.fsync(building)
            self._commit(building, final)
        except OSError as error:
            for leftover in (building, output):
                if os.path.lexists(leftover):
                    with suppress(OSError):
                        self.ops.rmtree(leftover)
            if removed:
                raise Unlinked(error, tuple(removed)) from error
            raise
        self._finish(part_id, engine, Tail.FAILED)

    def set_aside_reads(self, jobid: str, engine: str, inside: Iterable[str]) -> None:
        """Rename the reads files an account rejected (paths inside the job's output folder),
        with their indexes, so that no merge moves them: they stay with the logs."""
        output = self.paths.output_folder(FolderKind.TMPOUTPUT, jobid, engine)
        for each in inside:
            source = output / each
            indexes = {source.name + s for s in INDEX_SUFFIXES} | {
                source.stem + s for s in INDEX_SUFFIXES
            }
            for name in (source.name, *sorted(indexes)):
                path = source.with_name(name)
                with suppress(FileNotFoundError):
                    _rename_aside(self.ops, path, path.with_name(name + REJECTED_SUFFIX))
            self.ops.fsync(source.parent)

    def commit_failed(self, jobid: str, engine: str, kind: FolderKind) -> None:
        """Commit a failed attempt as FAILED_ (retried), QUARANTINED_ or EXCUSED_, then set its
        output aside as FAILEDOUTPUT_, where the agent's record says why."""
        assigned = self.paths.input_folder(FolderKind.ASSIGNED, jobid, engine)
        self._commit(assigned, assigned.with_name(job_folder(kind, jobid, engine)))
        self._finish(jobid, engine, Tail.FAILED)

    def failed_attempt(self, jobid: str, engine: str) -> scan.AttemptRecord | None:
        """What the agent recorded of a failed job, and why the account of its reads rejected
        it, if it did, from its FAILEDOUTPUT_ folder."""
        output = self.paths.output_folder(FolderKind.FAILEDOUTPUT, jobid, engine)
        account = scan.json_record(output / ACCOUNT_FILE) or {}
        rejected = account.get("rejected")
        return scan.attempt_record(
            output / ATTEMPT_FILE, rejected[:300] if isinstance(rejected, str) else None
        )

    def retry(self, names: set[str] | None) -> list[str]:
        """Send files back: each FAILED_ or QUARANTINED_ folder that holds one of ``names``
        alone (None: every quarantined file) becomes EXCUSED_, so its failure no longer
        counts, and is fsynced. Returns the files whose attempts were excused. Works with or
        without a manager running (one that runs must then be told: ``Manager.retry``)."""
        return self.excuse(self.to_retry(names))

    def to_retry(self, names: set[str] | None) -> list[tuple[JobFolderName, str]]:
        """The attempts ``retry`` would excuse, each with its one file; reads only, so that a
        retry can be recorded before it is made."""
        alone: list[tuple[JobFolderName, str]] = []
        for folder in scan.list_input(self.paths.input_dir).job_folders:
            if folder.kind in (FolderKind.FAILED, FolderKind.QUARANTINED):
                files = raw_names_among(scan.names_in(self.paths.input_dir / folder.name))
                if len(files) == 1:
                    alone.append((folder, files[0]))
        if names is None:
            names = {name for folder, name in alone if folder.kind is FolderKind.QUARANTINED}
        return [(folder, name) for folder, name in alone if name in names]

    def excuse(self, attempts: list[tuple[JobFolderName, str]]) -> list[str]:
        """Rename each attempt of ``to_retry`` to EXCUSED_, fsynced; returns their files."""
        for folder, _ in attempts:
            path = self.paths.input_dir / folder.name
            excused = job_folder(FolderKind.EXCUSED, folder.jobid, folder.engine)
            _rename_new(self.ops, path, path.with_name(excused))
        if attempts:
            self.ops.fsync(self.paths.input_dir)
        return sorted({name for _, name in attempts})

    def commit_release(self, jobid: str, engine: str, tail: Tail) -> None:
        """Take the lease back: STOPPED (``Tail.DISCARD``) or EXPIRED (output kept)."""
        assigned = self.paths.input_folder(FolderKind.ASSIGNED, jobid, engine)
        self._commit(assigned, assigned.with_name(temp_name(assigned.name)))
        self._finish(jobid, engine, tail)

    def _commit(self, source: Path, destination: Path) -> None:
        """The commit rename, made durable. If the fsync fails, the rename is undone and the
        error raised, so that the caller's "nothing changed" holds; if even the undo fails,
        the change stands (the caller records it) and only its durability is in doubt."""
        _rename_new(self.ops, source, destination)
        try:
            self.ops.fsync(self.paths.input_dir)
        except OSError as error:
            try:
                self.ops.rename(destination, source)
            except OSError:
                log.error(
                    "%s: renamed, but neither made durable (%s) nor undone", destination, error
                )
                return
            raise

    def finish_tails(self) -> list[str]:
        """Retry the tails that failed; one line per job finished now."""
        finished = []
        for jobid, (engine, tail) in list(self.unfinished.items()):
            try:
                self._run_tail(jobid, engine, tail)
            except OSError as error:
                log.warning("job %s: still cannot %s (%s)", jobid, tail.value, error)
                continue
            del self.unfinished[jobid]
            finished.append(f"job {jobid}: did {tail.value}")
        return finished

    def _finish(self, jobid: str, engine: str, tail: Tail) -> None:
        """Run a tail; if the disk refuses, remember it for ``finish_tails``."""
        try:
            self._run_tail(jobid, engine, tail)
        except OSError as error:
            self.unfinished[jobid] = (engine, tail)
            self.problems[jobid] = (
                f"job {jobid} could not {tail.value} ({error}); retried at each rescan"
            )
            log.error(
                "job %s: could not %s (%s); retried at the next rescan or start-up",
                jobid,
                tail.value,
                error,
            )

    def _run_tail(self, jobid: str, engine: str, tail: Tail) -> None:
        """Each step checks what is there first, so a tail can be run again after a failure."""
        if tail is Tail.DONE:
            self.roll_forward(jobid, engine, FolderKind.DONE)
        elif tail is Tail.FAILED:
            self.roll_forward(jobid, engine, FolderKind.FAILED)
        else:
            output = self.paths.output_folder(FolderKind.TMPOUTPUT, jobid, engine)
            kept_as = KEPT_AS.get(tail)
            if kept_as is not None:
                self._set_aside(output, self.paths.output_folder(kept_as, jobid, engine))
            elif is_real_folder(output):
                self.ops.rmtree(output)
            elif os.path.lexists(output):
                self.ops.unlink(output)
            retired = self.paths.input_dir / temp_name(
                job_folder(FolderKind.ASSIGNED, jobid, engine)
            )
            if os.path.lexists(retired):
                self.ops.rmtree(retired)
        self.problems.pop(jobid, None)

    def roll_forward(self, jobid: str, engine: str, kind: FolderKind) -> list[str]:
        """Finish a committed DONE or FAILED. Returns what it did and what it left, one line
        each (empty when there was nothing left to do)."""
        output = self.paths.output_folder(FolderKind.TMPOUTPUT, jobid, engine)
        if not os.path.lexists(output):
            return []
        notes = self._merge(output, jobid) if kind is FolderKind.DONE else []
        final = FolderKind.LOGOUTPUT if kind is FolderKind.DONE else FolderKind.FAILEDOUTPUT
        where = self._set_aside(output, self.paths.output_folder(final, jobid, engine))
        return [*notes, f"moved {output.name} to {where.name}"]

    def _merge(self, output: Path, jobid: str) -> list[str]:
        """Move a done job's reads files into pass/ and fail/; returns what was left and why."""
        notes: list[str] = []
        touched: set[Path] = set()
        for source, parts, refused in output_entries(output):
            inside = "/".join(parts) or output.name
            where = merge_target(parts) if refused is None else None
            if refused is not None:
                notes.append(f"left with the logs: {inside} {refused}")
            if where is None:
                continue
            verdict, barcode = where
            folder = self.paths.output_dir / verdict
            if barcode is not None:
                folder = folder / barcode
            target = folder / final_fastq_name(jobid, parts[-1])
            if os.path.lexists(target):
                notes.append(
                    f"left with the logs: {inside}, as "
                    f"{target.relative_to(self.paths.output_dir)} exists already"
                )
                continue
            if folder not in touched and not folder.is_dir():
                self.ops.mkdir(folder)
            self._move(source, target)
            touched.add(folder)
        for folder in touched:
            self.ops.fsync(folder)
        for note in notes:
            log.warning("job %s: %s", jobid, note)
        return notes

    def _move(self, source: Path, target: Path) -> None:
        """Rename a file into place; across filesystems copy it under a hidden name, make it
        durable, rename it into place, then remove the source."""
        try:
            _rename_new(self.ops, source, target)
            return
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
        copying = target.with_name(f"{TEMP_PREFIX}{target.name}")
        if os.path.lexists(copying):
            self.ops.unlink(copying)  # a copy a crash interrupted: the source is still there
        self.ops.copy(source, copying)
        self.ops.fsync(copying)
        _rename_new(self.ops, copying, target)
        self.ops.unlink(source)

    def _set_aside(self, output: Path, wanted: Path) -> Path:
        """Move an output folder (or whatever an engine left in its place) out of the way,
        durably, under ``wanted`` or a fresh name beside it."""
        if not os.path.lexists(output):
            return wanted
        where = _rename_aside(self.ops, output, wanted)
        self.ops.fsync(self.paths.output_dir)
        return where

    # -- start-up ---------------------------------------------------------------------------

    def recover(
        self, others: frozenset[str] = frozenset(), listing: scan.InputListing | None = None
    ) -> Recovered:
        """Read the run back from disk, finishing what a crash interrupted. Raises OSError only
        when INPUT_DIR or OUTPUT_DIR cannot be used at all; a job whose leftovers cannot be
        handled is logged, kept in ``problems``, and the rest of the run goes on. ``others``
        are the jobs of the other raw folders of the run, which share its output folder:
        their output is theirs, not unclaimed. ``listing``: INPUT_DIR as discovery listed it
        just before (None: listed here). Only this manager, which holds the lock, makes job
        and temporary folders, so none can have come or gone since; raw files written since
        are found by the first scan's closing rescan, as those written during recovery are."""
        self.prepare()
        found = Recovered()
        if listing is None:
            listing = scan.list_input(self.paths.input_dir)
        output_names = set(scan.names_in(self.paths.output_dir))
        found.raw = listing.raw
        for name in listing.temp:
            self._recover_step(found, name, name, self._remove_temp, name)
        # Output folders are listed once, up front: a run holds one per job, and a stat of
        # each job's output folder would cost a start-up more than all of its listings.
        running = {
            (folder.jobid, folder.engine)
            for folder in scan.parse_job_folders(output_names, FolderKind.TMPOUTPUT)
            if folder.jobid not in others
        }
        claimed: set[tuple[str, str]] = set()
        # Paths joined as text: os.path.join cost a million-file start-up 0.2 s, a pathlib
        # join more than the listing of each job folder.
        input_dir = str(self.paths.input_dir)
        for folder in listing.job_folders:
            job = (folder.jobid, folder.engine)
            claimed.add(job)
            name = folder.name
            self._recover_step(
                found,
                folder.jobid,
                name,
                self._recover_job,
                found,
                folder,
                f"{input_dir}/{name}",
                job in running,
                output_names,
            )
        for jobid, engine in sorted(running - claimed):
            output = self.paths.output_folder(FolderKind.TMPOUTPUT, jobid, engine)
            wanted = self.paths.output_folder(FolderKind.EXPIREDOUTPUT, jobid, engine)
            self._recover_step(
                found, jobid, output.name, self._set_aside_unclaimed, found, output, wanted
            )
        # Set operations, in C: most of a big run's FASTQ belongs to files that its DONE_
        # folders record already, and then no raw name needs looking up.
        known = frozenset(folder.jobid for folder, _ in found.ended)
        with_fastq = scan.raw_names_with_fastq(self.paths.output_dir, known)
        with_fastq.difference_update(*(files for _, files in found.ended))
        if with_fastq:
            found.done_by_fastq = list(with_fastq.intersection(listing.raw))
        return found

    def _recover_step(
        self,
        found: Recovered,
        key: str,
        name: str,
        step: Callable[..., None],
        *args: object,
    ) -> None:
        """Run one job's part of recovery; an OSError is that job's problem, not the run's."""
        try:
            step(*args)
        except OSError as error:
            message = f"could not recover {name} ({error}); the rest of the run goes on"
            self.problems[key] = message
            found.repaired.append(message)
            log.error("recovery: %s", message)

    def _remove_temp(self, name: str) -> None:
        path = self.paths.input_dir / name
        if is_real_folder(path):
            self.ops.rmtree(path)
        else:
            self.ops.unlink(path)

    def _recover_job(
        self,
        found: Recovered,
        folder: JobFolderName,
        path: str,
        running: bool,
        output_names: set[str],
    ) -> None:
        """One job folder (at ``path``) read back."""
        # Only links named like a raw file stand for one: nothing else is ever offered.
        files = raw_names_among(scan.names_in(path))
        jobid, engine = folder.jobid, folder.engine
        if folder.kind is FolderKind.ASSIGNED:
            # Oldest first; a file deleted since it was leased stays the engine's all the same.
            ordered = scan.oldest_first(self.paths.input_dir, files)
            ordered += sorted(set(files).difference(ordered))
            found.assigned.append((folder, ordered))
            if not running:
                output = self.paths.output_folder(FolderKind.TMPOUTPUT, jobid, engine)
                self.ops.mkdir(output)
                found.repaired.append(f"recreated {output.name}")
            return
        if folder.kind is not FolderKind.EXCUSED:
            found.ended.append((folder, files))
        if not running:
            return
        final = FolderKind.LOGOUTPUT if folder.kind is FolderKind.DONE else FolderKind.FAILEDOUTPUT
        if job_folder(final, jobid, engine) in output_names:
            # The tail's last step was done: this output was written after the job ended.
            output = self.paths.output_folder(FolderKind.TMPOUTPUT, jobid, engine)
            where = self._set_aside(output, self.paths.output_folder(final, jobid, engine))
            found.repaired.append(
                f"set aside {output.name} as {where.name}: written after {folder.name}"
            )
            return
        try:
            lines = self.roll_forward(jobid, engine, folder.kind)
        except OSError:
            tail = Tail.DONE if folder.kind is FolderKind.DONE else Tail.FAILED
            self.unfinished[jobid] = (engine, tail)
            raise
        found.repaired.extend(f"{folder.name}: {line}" for line in lines)

    def _set_aside_unclaimed(self, found: Recovered, output: Path, wanted: Path) -> None:
        where = self._set_aside(output, wanted)
        found.repaired.append(f"set aside {output.name} as {where.name}: no job folder claims it")
