"""The ``bcmanager`` command: one subcommand per concern, each defined in its own module.

Command ``x`` is the module ``cli/x.py``, or ``cli.py`` of its own program's package (``agent``,
``sim``: they import nothing of the server). The module contributes the subcommand through
``add_command(subparsers)``; the parser it adds sets ``func`` to ``run_x``, which takes the
parsed arguments and returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bcmanager import __version__

# Each command and the module that defines it. Running a command imports its module alone, so an
# agent, a basecaller or ``check`` starts in a fraction of the time the web app takes to load.
COMMANDS = {
    "serve": "bcmanager.cli.serve",
    "openapi": "bcmanager.cli.openapi",
    "agent": "bcmanager.agent.cli",
    "simulate": "bcmanager.sim.cli",
    "demo": "bcmanager.cli.demo",
    "status": "bcmanager.cli.status",
    "runs": "bcmanager.cli.runs",
    "check": "bcmanager.cli.check",
    "retry": "bcmanager.cli.retry",
    "report": "bcmanager.cli.report",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``command`` alone when it names one; else of every command (for the help,
    and for the message that names the commands when one is mistyped)."""
    parser = argparse.ArgumentParser(
        prog="bcmanager",
        description="Coordinate GPU basecalling of a nanopore run while it is still sequencing.",
    )
    parser.add_argument("--version", action="version", version=f"bcmanager {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = [COMMANDS[command]] if command in COMMANDS else COMMANDS.values()
    for module in dict.fromkeys(wanted):
        importlib.import_module(module).add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(words[0] if words else None).parse_args(words)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
