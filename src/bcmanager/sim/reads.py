"""What the simulated basecaller writes: the reads it makes of each raw read, as Dorado would
split them, and the reads files (FASTQ, or unaligned BAM as Dorado writes it) that hold them,
each under a hidden name until it is complete."""

from __future__ import annotations

import array
import itertools
import os
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pod5  # type: ignore[import-untyped]

from bcmanager import __version__
from bcmanager.reads import stats as readstats
from bcmanager.reads.files import derived_read_id
from bcmanager.sim.sequencer import PARTIAL_SUFFIX, SAMPLES_PER_BASE, Progress, SimulatorError


class ReadsFormat(str, Enum):
    """What the simulated basecaller writes."""

    FASTQ = "fastq"  # plain FASTQ, as ``dorado basecaller --emit-fastq``
    BAM = "bam"  # unaligned BAM, Dorado's default: needs pysam


# A read whose mean Q-score is below this goes to *_fail in the Dorado layout, as Dorado's
# default --min-qscore for its hac models sends it.
MIN_QSCORE = 9
_Q_SPREAD = 4  # a base's quality differs from its read's centre by up to this much
_SPLIT_PIECES = (2, 2, 2, 3)  # a split read comes out as 2 records, now and then as 3
_MIN_BASES = max(_SPLIT_PIECES)  # a base for each piece a read may be split into
_BGZF_EOF_SIZE = 28  # the empty BGZF block that ends every complete BAM file


@dataclass(frozen=True, slots=True)
class BasecalledFile:
    """One reads file the simulated basecaller wrote, and how many reads it holds."""

    path: Path
    reads: int


@dataclass(frozen=True, slots=True)
class SimulatedRead:
    """What the simulated basecaller makes of one read: all of it follows from the read id and
    its signal's length, so a test can say what a file must hold without parsing it."""

    read_id: str
    bases: str
    qualities: bytes  # phred scores, one per base
    parent_id: str | None = None  # the raw read a piece of a split read comes from
    split_point: int = 0  # where a piece starts in its parent's signal, in samples

    @classmethod
    def of(cls, read_id: str, samples: int) -> SimulatedRead:
        """Lengths spread around one base per ``SAMPLES_PER_BASE`` samples, and each read's
        qualities around a centre of its own, so both histograms have some shape."""
        rng = random.Random(read_id)
        length = max(_MIN_BASES, round(samples / SAMPLES_PER_BASE * rng.uniform(0.3, 1.7)))
        bases = "".join(rng.choices("ACGT", k=length))
        centre = min(35, max(3, round(rng.gauss(14, 5))))
        qualities = bytes(
            min(50, max(1, centre + spread))
            for spread in rng.choices(range(-_Q_SPREAD, _Q_SPREAD + 1), k=length)
        )
        return cls(read_id, bases, qualities)

    @property
    def mean_qscore(self) -> float:
        return readstats.phred_mean_qscore(self.qualities)

    def fastq(self, header: str) -> str:
        quality_text = "".join(chr(33 + phred) for phred in self.qualities)
        return f"@{self.read_id} {header}\n{self.bases}\n+\n{quality_text}\n"

    def split(self, samples: int, seed: int, split_fraction: float) -> list[SimulatedRead]:
        """The records this read comes out as: itself, or the pieces Dorado's read splitting
        would make of it (``split_children`` names them), which together hold its bases and
        qualities in order; ``samples`` is its signal's length, to place each piece in it."""
        pieces, rng = _split_plan(self.read_id, seed, split_fraction)
        if pieces == 1:
            return [self]
        length = len(self.bases)
        cuts = [0, *sorted(rng.sample(range(1, length), pieces - 1)), length]
        return [
            SimulatedRead(
                derived_read_id(self.read_id, index),
                self.bases[start:end],
                self.qualities[start:end],
                parent_id=self.read_id,
                split_point=start * samples // length,
            )
            for index, (start, end) in enumerate(itertools.pairwise(cuts))
        ]


def split_children(read_id: str, seed: int, split_fraction: float) -> list[str]:
    """The read ids a raw read comes out as when split, in order; empty when it is not.

    Which reads are split follows from ``seed`` and the read id; the pieces are named as Dorado
    names them, so the same rule finds them in Dorado's own output.
    """
    pieces, _ = _split_plan(read_id, seed, split_fraction)
    return [derived_read_id(read_id, index) for index in range(pieces)] if pieces > 1 else []


def _split_plan(read_id: str, seed: int, split_fraction: float) -> tuple[int, random.Random]:
    """How many records a read comes out as, and the generator that goes on to place its cuts."""
    rng = random.Random(f"split:{seed}:{read_id}")
    if rng.random() >= split_fraction:
        return 1, rng
    return rng.choice(_SPLIT_PIECES), rng


def barcode_of(read_id: str, barcodes: int) -> str | None:
    """The barcode folder a read goes to when reads are spread over ``barcodes`` barcodes:
    barcode01..NN or unclassified, each about as likely; None with no barcodes."""
    if barcodes <= 0:
        return None
    index = random.Random(f"barcode:{read_id}").randrange(barcodes + 1)
    return "unclassified" if index == barcodes else f"barcode{index + 1:02d}"


def cut_short(path: Path, reads_format: ReadsFormat) -> None:
    """Leave ``path`` as a basecaller dying mid-write leaves it (dorado issue #262): a BAM file
    without its BGZF end-of-file block, a FASTQ file ending after its last record's '+' line."""
    if reads_format is ReadsFormat.BAM:
        keep = path.stat().st_size - _BGZF_EOF_SIZE
    else:
        data = path.read_bytes()
        keep = data.rindex(b"\n", 0, len(data) - 1) + 1
    os.truncate(path, keep)


class Outputs:
    """The reads files being written, each under a hidden name until ``finish`` renames it."""

    def __init__(self, output_dir: Path, reads_format: ReadsFormat, model: str) -> None:
        self._output_dir = output_dir
        self._format = reads_format
        self._model = model
        self._open: dict[Path, _ReadsWriter] = {}
        self.written: list[BasecalledFile] = []

    def add(
        self,
        where: Path,
        read: SimulatedRead,
        run_info: pod5.RunInfo,
        header: str,
        barcode: str | None,
    ) -> None:
        writer = self._open.get(where)
        if writer is None:
            target = self._output_dir / where.with_name(f"{where.name}.{self._format.value}")
            target.parent.mkdir(parents=True, exist_ok=True)
            if self._format is ReadsFormat.BAM:
                writer = _BamWriter(target, run_info, self._model)
            else:
                writer = _FastqWriter(target)
            self._open[where] = writer
        writer.add(read, header, barcode)

    def finish(self, say: Progress) -> None:
        """Rename every file written so far into place."""
        for writer in self._open.values():
            writer.close()
            os.replace(writer.partial, writer.target)
            self.written.append(BasecalledFile(writer.target, writer.reads))
            shown = writer.target.relative_to(self._output_dir)
            say(f"simulated basecaller: wrote {shown} ({writer.reads} reads)")
        self._open.clear()

    def abandon(self) -> None:
        """Close what is still open (after an error); its hidden files stay behind."""
        for writer in self._open.values():
            writer.close()
        self._open.clear()


class _ReadsWriter(ABC):
    """One reads file, written under a hidden name beside its target."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.partial = target.with_name(f".{target.name}{PARTIAL_SUFFIX}")
        self.reads = 0

    @abstractmethod
    def add(self, read: SimulatedRead, header: str, barcode: str | None) -> None:
        """Append one read's record."""

    @abstractmethod
    def close(self) -> None:
        """Flush and close the hidden file."""


class _FastqWriter(_ReadsWriter):
    """FASTQ with the simulator's own header words. A piece of a split read carries no parent
    id: Dorado's FASTQ headers hold a fixed few SAM tags (RG, st, DS, qs, ch, ...), never
    ``pi``, so its pieces are known only by their ids (``split_children``)."""

    def __init__(self, target: Path) -> None:
        super().__init__(target)
        self._file = self.partial.open("w", encoding="ascii")

    def add(self, read: SimulatedRead, header: str, barcode: str | None) -> None:
        tag = f" barcode={barcode}" if barcode else ""
        self._file.write(read.fastq(header + tag))
        self.reads += 1

    def close(self) -> None:
        self._file.close()


class _BamWriter(_ReadsWriter):
    """Unaligned BAM as Dorado writes it: an @PG line for the basecaller and an @RG line
    whose description names the model (``basecall_model=``); each record carries its read
    group, its mean Q-score (``qs``) and its barcode (``BC``) when it has one, and a piece of
    a split read its parent's id (``pi``) and where it starts in its parent's signal (``sp``)."""

    def __init__(self, target: Path, run_info: pod5.RunInfo, model: str) -> None:
        super().__init__(target)
        try:
            import pysam
        except ImportError as exc:
            raise SimulatorError("writing BAM needs pysam: pip install 'bcmanager[agent]'") from exc
        self._pysam = pysam
        self._group = f"{run_info.acquisition_id}_{model}"
        header = {
            "HD": {"VN": "1.6", "SO": "unknown"},
            "PG": [
                {
                    "ID": "basecaller",
                    "PN": "bcmanager-simulate",
                    "VN": __version__,
                    "CL": f"bcmanager simulate basecaller --model {model}",
                }
            ],
            "RG": [
                {
                    "ID": self._group,
                    "PU": run_info.flow_cell_id,
                    "PL": "ONT",
                    "DS": f"basecall_model={model} runid={run_info.acquisition_id}",
                    "LB": run_info.sample_id,
                    "SM": run_info.sample_id,
                }
            ],
        }
        self._file = pysam.AlignmentFile(str(self.partial), "wb", header=header)

    def add(self, read: SimulatedRead, header: str, barcode: str | None) -> None:
        record = self._pysam.AlignedSegment(self._file.header)
        record.query_name = read.read_id
        record.flag = 4  # unmapped
        record.query_sequence = read.bases
        record.query_qualities = array.array("B", read.qualities)
        tags: list[tuple[str, object, str]] = [
            ("RG", self._group, "Z"),
            ("qs", read.mean_qscore, "f"),
        ]
        if barcode:
            tags.append(("BC", barcode, "Z"))
        if read.parent_id:
            tags += [("pi", read.parent_id, "Z"), ("sp", read.split_point, "i")]
        record.set_tags(tags)
        self._file.write(record)
        self.reads += 1

    def close(self) -> None:
        self._file.close()
