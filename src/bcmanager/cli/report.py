"""``bcmanager report``: write a run's report from its folders, with or without a manager."""

from __future__ import annotations

import argparse
import sys

from bcmanager.core import scan
from bcmanager.facility.discovery import HERE, Layout, discover, named_run
from bcmanager.facility.runreport import write_run_report
from bcmanager.facility.yieldledger import rebuild_yield
from bcmanager.paths import FolderKind, RunPaths
from bcmanager.settings import load_settings


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a run's report (report.json and report.html) from its folders",
        description="Gather what a run's folders say (files done and quarantined, the reads "
        "the agents counted, the reads its POD5 files hold) and write report.json and "
        "report.html into the run's output folder, as the manager does when a run completes. "
        "Works with or without a manager running.",
    )
    parser.add_argument(
        "run", nargs="?", default=HERE, help="the run's path under INPUT_DIR (default: '.')"
    )
    parser.add_argument("--input-dir", help="INPUT_DIR (default: env BCM_INPUT_DIR)")
    parser.add_argument("--output-dir", help="OUTPUT_DIR (default: env BCM_OUTPUT_DIR)")
    parser.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    settings = load_settings({"input_dir": args.input_dir, "output_dir": args.output_dir})
    if settings is None:
        return 2
    input_root, output_root = settings.input_dir.resolve(), settings.output_dir.resolve()
    run = named_run(input_root, args.run)
    if run is None:
        print(f"bcmanager report: {args.run} is not under {input_root}", file=sys.stderr)
        return 1
    layout = Layout(settings.run_folder, settings.discovery_depth)
    found = [each for each in discover(input_root, layout, below=run) if each.run == run]
    if not found:
        print(f"bcmanager report: no run {run!r} under {input_root}", file=sys.stderr)
        return 1
    output = output_root if run == HERE else output_root / run
    raw_folders = [
        RunPaths(input_root / each.raw_folder if each.raw_folder != HERE else input_root, output)
        for each in found
    ]
    try:
        logs = [
            output / name
            for name in scan.names_in(output)
            if name.startswith((FolderKind.LOGOUTPUT.value, FolderKind.FAILEDOUTPUT.value))
        ]
        json_path, html_path, report = write_run_report(
            run, output, raw_folders, rebuild_yield(logs)
        )
    except OSError as error:
        print(f"bcmanager report: {error}", file=sys.stderr)
        return 2
    basecalled = report["basecalled"]
    print(
        f"{run}: {report['files_done']} files done, {report['files_quarantined']} quarantined, "
        f"{basecalled['reads']:,} reads, {basecalled['bases']:,} bases"
    )
    print(html_path)
    print(json_path)
    return 0
