"""The ``bcmanager`` command: one subcommand per concern, each defined in its own module.

A module contributes a subcommand through ``add_command(subparsers)``; the parser it adds sets
``func``, which takes the parsed arguments and returns the exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bcmanager import (
    __version__,
    agent,
    check,
    demo,
    retry,
    runreport,
    runs_cli,
    serve,
    simulate,
    status_view,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bcmanager",
        description="Coordinate GPU basecalling of a nanopore run while it is still sequencing.",
    )
    parser.add_argument("--version", action="version", version=f"bcmanager {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, agent, simulate, demo, status_view, runs_cli, check, retry, runreport):
        module.add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
