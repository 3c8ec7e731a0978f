"""``bcmanager openapi``: print the service's OpenAPI schema without starting it."""

from __future__ import annotations

import argparse
import json
import sys

from bcmanager.cli.serve import openapi_schema


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    schema = subparsers.add_parser(
        "openapi",
        help="print the service's OpenAPI schema (what openapi/openapi.json holds)",
        description="Print the OpenAPI schema of the manager's HTTP API as JSON on stdout, "
        "without starting it: `make openapi` writes it to openapi/openapi.json.",
    )
    schema.set_defaults(func=run_openapi)


def run_openapi(args: argparse.Namespace) -> int:
    json.dump(openapi_schema(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0
