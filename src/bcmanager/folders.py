"""Writing the run's folders: each change of a job's state on disk, with one commit point.

Every multi-step change is built so that one atomic rename commits it (DESIGN.md, invariant 5):

- assign:   build ``.bcm-tmp-ASSIGNED_x`` with the symlinks and create ``TMPOUTPUT_x``, then rename
            the temp folder to ``ASSIGNED_x``. Before the rename nothing is leased.
- done:     rename ``ASSIGNED_x`` to ``DONE_x`` (the commit), then move the FASTQ into pass/ and
            fail/ and rename ``TMPOUTPUT_x`` to ``LOGOUTPUT_x``. Start-up rolls the rest forward.
- failed:   rename ``ASSIGNED_x`` to ``FAILED_x``, then ``TMPOUTPUT_x`` to ``FAILEDOUTPUT_x``.
- stopped and expired: rename ``ASSIGNED_x`` to a temp name (the commit: its files are no longer
            leased), then discard (stopped) or keep aside as ``EXPIREDOUTPUT_x`` (expired) the
            output, and remove the temp folder.

What follows a commit point (the "tail") may fail too, on a full or failing disk: the change
stands, the failed tail is remembered and ``finish_tails`` retries it (the manager calls it at
each rescan). Start-up (``recover``) removes temp folders, rolls committed changes forward, and
sets aside output folders that no job folder claims, so a tail is finished even if the manager
died before it retried. Every call that touches the disk goes through ``DiskOps``, so tests can
inject ENOSPC or EIO at any single step.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from dataclasses import dataclass, field
from enum import Enum
from itertools import chain
from pathlib import Path

from bcmanager import scan
from bcmanager.paths import (
    FAIL,
    PASS,
    FolderKind,
    JobFolderName,
    RunPaths,
    final_fastq_name,
    job_folder,
    raw_names_among,
    temp_name,
)

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


def _rename_new(ops: DiskOps, source: Path, destination: Path) -> None:
    """Rename, refusing to replace what is there: an existing target means a fact we must keep."""
    if os.path.lexists(destination):
        raise FileExistsError(errno.EEXIST, "refusing to replace", str(destination))
    ops.rename(source, destination)


class Tail(str, Enum):
    """What is left to do after a commit point; the value says it in words for the logs."""

    DONE = "move its FASTQ into pass/ and fail/"
    FAILED = "set its output aside"
    EXPIRED = "set its output aside and remove its retired lease"
    DISCARD = "remove its output and its retired or half-built lease"


@dataclass(slots=True)
class Recovered:
    """What start-up found on disk, after cleaning up and rolling forward."""

    assigned: list[tuple[JobFolderName, list[str]]] = field(default_factory=list)
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
    """The job folders of one run."""

    def __init__(self, paths: RunPaths, ops: DiskOps | None = None) -> None:
        self.paths = paths
        self.ops = ops or DiskOps()
        self.unfinished: dict[str, tuple[str, Tail]] = {}  # jobid -> (engine, tail to retry)

    def prepare(self) -> None:
        """Create OUTPUT_DIR and its pass/ and fail/ if missing."""
        for folder in (self.paths.output_dir, self.paths.pass_dir, self.paths.fail_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # -- assign -----------------------------------------------------------------------------

    def build_job(self, jobid: str, engine: str, files: tuple[str, ...]) -> None:
        """Lease ``files`` on disk; on any error nothing stays and the error is raised."""
        final = self.paths.input_folder(FolderKind.ASSIGNED, jobid, engine)
        building = final.with_name(temp_name(final.name))
        output = self.paths.output_folder(FolderKind.TMPOUTPUT, jobid, engine)
        try:
            self.ops.mkdir(building)
            for name in files:
                self.ops.symlink(os.path.join(os.pardir, name), building / name)
            self.ops.mkdir(output)
            _rename_new(self.ops, building, final)
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
        _rename_new(
            self.ops, assigned, assigned.with_name(job_folder(FolderKind.DONE, jobid, engine))
        )
        self._finish(jobid, engine, Tail.DONE)

    def commit_failed(self, jobid: str, engine: str) -> None:
        assigned = self.paths.input_folder(FolderKind.ASSIGNED, jobid, engine)
        failed = assigned.with_name(job_folder(FolderKind.FAILED, jobid, engine))
        _rename_new(self.ops, assigned, failed)
        self._finish(jobid, engine, Tail.FAILED)

    def commit_release(self, jobid: str, engine: str, *, keep_output: bool) -> None:
        """Take the lease back (STOPPED, or EXPIRED with ``keep_output``)."""
        assigned = self.paths.input_folder(FolderKind.ASSIGNED, jobid, engine)
        _rename_new(self.ops, assigned, assigned.with_name(temp_name(assigned.name)))
        self._finish(jobid, engine, Tail.EXPIRED if keep_output else Tail.DISCARD)

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
            return
        if tail is Tail.FAILED:
            self.roll_forward(jobid, engine, FolderKind.FAILED)
            return
        output = self.paths.output_folder(FolderKind.TMPOUTPUT, jobid, engine)
        if tail is Tail.EXPIRED:
            self._set_aside(output, jobid, engine)
        elif output.exists():
            self.ops.rmtree(output)
        retired = self.paths.input_dir / temp_name(job_folder(FolderKind.ASSIGNED, jobid, engine))
        if os.path.lexists(retired):
            self.ops.rmtree(retired)

    def roll_forward(self, jobid: str, engine: str, kind: FolderKind) -> bool:
        """Finish a committed DONE or FAILED: returns whether there was anything left to do."""
        output = self.paths.output_folder(FolderKind.TMPOUTPUT, jobid, engine)
        if not output.is_dir():
            return False
        if kind is FolderKind.DONE:
            for sub, target_dir in ((PASS, self.paths.pass_dir), (FAIL, self.paths.fail_dir)):
                source_dir = output / sub
                if not source_dir.is_dir():
                    continue
                for name in scan.names_in(source_dir):
                    if name.startswith("."):
                        continue  # a basecaller's unfinished temp file: stays with the logs
                    target = target_dir / final_fastq_name(jobid, name)
                    _rename_new(self.ops, source_dir / name, target)
            final = FolderKind.LOGOUTPUT
        else:
            final = FolderKind.FAILEDOUTPUT
        _rename_new(self.ops, output, self.paths.output_folder(final, jobid, engine))
        return True

    def _set_aside(self, output: Path, jobid: str, engine: str) -> None:
        if output.is_dir():
            aside = self.paths.output_folder(FolderKind.EXPIREDOUTPUT, jobid, engine)
            _rename_new(self.ops, output, aside)

    # -- start-up ---------------------------------------------------------------------------

    def recover(self) -> Recovered:
        """Read the run back from disk, finishing what a crash interrupted."""
        self.prepare()
        found = Recovered()
        listing = scan.list_input(self.paths.input_dir)
        found.raw = listing.raw
        for name in listing.temp:
            self.ops.rmtree(self.paths.input_dir / name)
            found.repaired.append(f"removed unfinished {name}")
        # Output folders are listed once, up front: a run holds one per job, and a stat of
        # each job's output folder would cost a start-up more than all of its listings.
        running = {
            (folder.jobid, folder.engine)
            for folder in scan.job_folders(self.paths.output_dir, FolderKind.TMPOUTPUT)
        }
        claimed: set[tuple[str, str]] = set()
        input_root = f"{self.paths.input_dir}{os.sep}"
        for folder in listing.job_folders:
            name = job_folder(folder.kind, folder.jobid, folder.engine)
            # Only links named like a raw file stand for one: nothing else is ever offered.
            files = raw_names_among(scan.names_in(input_root + name))
            job = (folder.jobid, folder.engine)
            claimed.add(job)
            if folder.kind is FolderKind.ASSIGNED:
                if job not in running:
                    output = self.paths.output_folder(FolderKind.TMPOUTPUT, *job)
                    self.ops.mkdir(output)
                    found.repaired.append(f"recreated {output.name}")
                found.assigned.append((folder, scan.oldest_first(self.paths.input_dir, files)))
            elif folder.kind in (FolderKind.DONE, FolderKind.FAILED):
                if job in running and self.roll_forward(folder.jobid, folder.engine, folder.kind):
                    found.repaired.append(f"finished the output of {name}")
                found.ended.append((folder, files))
        for jobid, engine in sorted(running - claimed):
            output = self.paths.output_folder(FolderKind.TMPOUTPUT, jobid, engine)
            self._set_aside(output, jobid, engine)
            found.repaired.append(f"set aside {output.name}: no job folder claims it")
        # Set operations, in C: most of a big run's FASTQ belongs to files that its DONE_
        # folders record already, and then no raw name needs looking up.
        with_fastq = scan.raw_names_with_fastq(self.paths.output_dir)
        with_fastq.difference_update(*(files for _, files in found.ended))
        if with_fastq:
            found.done_by_fastq = list(with_fastq.intersection(listing.raw))
        return found
