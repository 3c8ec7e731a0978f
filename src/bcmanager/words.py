"""The wire's figures in words, said the same way by every place that shows them to a person:
the report, the page's status and ``bcmanager status``."""

from __future__ import annotations

from bcmanager.models import ReadsAccount


def account_line(account: ReadsAccount) -> str:
    """The account of a run's reads in one line (the report, the page and ``status``)."""
    return (
        f"{account.reads_in:,} raw reads in · {account.records_out:,} records out · "
        f"{account.split_reads:,} split · {account.reads_missing:,} missing · "
        f"{account.files_rejected:,} files rejected"
    )


def account_warnings(account: ReadsAccount) -> list[str]:
    """What the account of a run's reads asks a person to look at, one line each: the files
    rejected are named in their reasons."""
    found = []
    if account.reads_missing:
        found.append(
            f"{account.reads_missing:,} reads of done files did not come out "
            "(dropped on purpose, as BCM_MAY_DROP_READS allows)"
        )
    if account.files_rejected:
        found.append(
            f"{account.files_rejected:,} times a DONE's reads did not all come out and its "
            f"files went to the failure policy; last: {'; '.join(account.rejections)}"
        )
    if account.files_unchecked:
        found.append(
            f"{account.files_unchecked:,} done raw files were gone before their reads could "
            "be checked"
        )
    if account.jobs_without_account:
        found.append(f"{account.jobs_without_account:,} done jobs have no account of their reads")
    return found


def human_bases(value: int) -> str:
    """A number of bases, shortened: 950 b, 12.3 kb, 4.56 Gb."""
    for unit, size in (("Tb", 10**12), ("Gb", 10**9), ("Mb", 10**6), ("kb", 10**3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value} b"
