"""One voice across the commands: every command's help has a description, a default (or
"required") for every option that takes a value, the same flag names for the same things, and
names the environment variables the command reads. Addresses are read alike everywhere."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from bcmanager.cli import COMMANDS, build_parser
from bcmanager.urls import base_url
from conftest import Run, Server

# The environment variables each command reads, which its help must name.
READS = {
    "serve": ["BCM_INPUT_DIR", "BCM_OUTPUT_DIR", "BCM_HOST", "BCM_PORT", "BCM_API_TOKEN"],
    "agent": ["BCM_AGENT_MANAGER", "BCM_AGENT_ENGINE_ID", "BCM_AGENT_API_TOKEN"],
    "status": ["BCM_READ_TOKEN", "BCM_OPERATOR_TOKEN", "BCM_CA_FILE"],
    "runs": ["BCM_READ_TOKEN", "BCM_OPERATOR_TOKEN", "BCM_API_TOKEN", "BCM_CA_FILE"],
    "check": ["BCM_INPUT_DIR", "BCM_OUTPUT_DIR"],
    "retry": ["BCM_INPUT_DIR", "BCM_OUTPUT_DIR", "BCM_PORT", "BCM_HOST", "BCM_OPERATOR_TOKEN"],
}
# The same thing has the same flag in every command that takes it (old spellings may follow).
SAME_FLAGS = {
    "input_dir": "--input-dir",
    "output_dir": "--output-dir",
    "url": "--url",
    "manager": "--url",
}


def commands() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command and subcommand, by its name as typed after ``bcmanager``."""
    pending = [("", build_parser())]
    while pending:
        name, parser = pending.pop()
        if name:
            yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    pending.append((f"{name} {sub}".strip(), child))


def test_every_help_describes_its_command_and_defaults() -> None:
    walked = dict(commands())
    assert {"serve", "openapi", "agent", "demo", "status", "check", "retry"} <= walked.keys()
    assert {"runs", "runs list", "runs priority", "runs pause", "runs resume"} <= walked.keys()
    assert {"simulate sequencer", "simulate basecaller"} <= walked.keys()
    missing = []
    for name, parser in walked.items():
        text = parser.format_help()
        if not parser.description:
            missing.append(f"{name}: no description")
        for action in parser._actions:
            takes_value = action.option_strings and action.nargs != 0
            if not takes_value or isinstance(action, argparse.BooleanOptionalAction):
                continue
            shown = action.help or ""
            if "%(default)" in shown or issubclass(
                parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter
            ):
                continue
            if "default" not in shown and "required" not in shown:
                missing.append(f"{name} {action.option_strings[0]}: no default in its help")
        for variable in READS.get(name, []):
            if variable not in text:
                missing.append(f"{name}: does not name {variable}")
        for dest, flag in SAME_FLAGS.items():
            for action in parser._actions:
                if (
                    action.dest == dest
                    and action.option_strings
                    and flag not in action.option_strings
                ):
                    missing.append(f"{name}: {action.option_strings} for {dest}, not {flag}")
        assert text.count("SIMULATOR") <= 2, f"{name}: SIMULATOR repeated"
    assert missing == []


def test_old_spellings_are_still_accepted() -> None:
    parser = build_parser()
    old = parser.parse_args(["check", "--input", "/in", "--output", "/out"])
    new = parser.parse_args(["check", "--input-dir", "/in", "--output-dir", "/out"])
    assert (old.input_dir, old.output_dir) == (new.input_dir, new.output_dir) == ("/in", "/out")
    agent = parser.parse_args(["agent", "--url", "h:1"])
    assert agent.manager == "h:1"


def test_a_command_alone_parses_alike_and_loads_no_other_commands_module() -> None:
    walked = dict(commands())
    assert {name for name in walked if " " not in name} == COMMANDS.keys()
    for name in COMMANDS:
        [alone] = [
            action
            for action in build_parser(name)._actions
            if isinstance(action, argparse._SubParsersAction)
        ]
        assert alone.choices[name].format_help() == walked[name].format_help()
    # An agent or a basecaller starts without the web app, or the other one's code.
    probe = "import sys; from bcmanager.cli import build_parser; build_parser(sys.argv[1]); "
    probe += "print(*sorted({'fastapi', 'pod5', 'bcmanager.agent', 'bcmanager.sim'} "
    probe += "& sys.modules.keys()))"
    for command, loaded in (("agent", "bcmanager.agent"), ("simulate", "bcmanager.sim pod5")):
        shown = subprocess.run(
            [sys.executable, "-c", probe, command], capture_output=True, text=True, timeout=60
        )
        assert shown.stdout.split() == loaded.split(), shown.stderr


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("127.0.0.1:40765", "http://127.0.0.1:40765"),
        ("http://127.0.0.1:40765/", "http://127.0.0.1:40765"),
        ("gpu-head:40765/status", "http://gpu-head:40765"),
        ("https://lab.example.org/bcm/docs", "https://lab.example.org/bcm"),
        (" http://h:1/heartbeat/ ", "http://h:1"),
    ],
)
def test_addresses_are_read_alike(typed: str, meant: str) -> None:
    assert base_url(typed) == meant


def test_status_takes_host_and_port_or_a_copied_status_url(
    run: Run, start_server: Callable[..., Server]
) -> None:
    run.add_many(2)
    server = start_server()
    for typed in (f"127.0.0.1:{server.port}", f"{server.url}/status"):
        shown = subprocess.run(
            [sys.executable, "-m", "bcmanager", "status", "--url", typed],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "0 of 2 files basecalled" in shown.stdout
