"""The agent's command line (``bcmanager agent``): its flags, read from the settings' own
fields, its help, and the process around the job loop (logging, the HTTP client, signals)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from bcmanager.agent.errors import EXIT_CONFIGURATION, AgentError
from bcmanager.agent.events import log
from bcmanager.agent.loop import Agent
from bcmanager.agent.settings import ENV_ONLY, ENV_PREFIX, AgentSettings

EXIT_HELP = """\
Exit codes:
  0      stopped by SIGTERM or SIGINT (the batch given back), or no work left (--until-empty)
  1      the manager unreachable for --give-up-after seconds, or answering outside the protocol
  2      a bad setting, or the job folders are not where this node looks (--input-dir)
  3      this node cannot run the basecaller: the command cannot start (not found, not
         executable) or exits 126 or 127; the batch is given back, nothing is marked failed
  4      --max-failures-in-a-row jobs failed in a row on this node
  128+N  a second signal N: exited at once
"""

TEMPLATE_HELP = """\
The command template is split into words like a POSIX shell would (shlex), then these
placeholders are replaced inside each word; any other text, braces included, stays as it is:
  {input_dir}   absolute path of the job's folder of POD5 symlinks (INPUT_DIR/ASSIGNED_...,
                or INPUT_DIR/<run>/pod5/ASSIGNED_... under a root of runs)
  {output_dir}  absolute path of the job's output folder (OUTPUT_DIR/[<run>/]TMPOUTPUT_...); the
                basecaller writes its FASTQ under pass/ and fail/ in it
  {jobid}       the job id
  {engine_id}   this agent's engine id
The batch's run, as the manager says (empty when it does not, e.g. an older manager):
  {run_path}           the run's folder relative to INPUT_DIR ("." when INPUT_DIR is the run)
  {model}              the basecalling model its runs file gives the run
  {modified_bases}     the modified bases its runs file gives the run
  {kit}                the kit its runs file gives the run
  {sample_rate}        samples per second, as the run's POD5 files say
  {flow_cell_product}  the flow cell product code the POD5 files name (FLO-PRO114M)
  {sequencing_kit}     the sequencing kit the POD5 files name (SQK-LSK114)
So one pool of agents basecalls each run with its own model:
  --command 'dorado_run.sh {input_dir} {output_dir} {model} {modified_bases}'
The command runs without a shell, in a process group of its own (the agent stops the whole
group). Exit code 0 reports the job DONE, anything else FAILED, except 126 and 127 (a shell's
"cannot execute" and "not found"): those, and a command that cannot start, mean this node cannot
run the basecaller, so the batch is given back and the agent exits 3. The command's stderr
passes through to the agent's; its last 4 KiB, the exit code, signal and run time are written
to bcm-attempt.json at the top of the job's output folder before the job is reported.

The original BCProcessor's convention `script INPUT OUTPUT MODEL`:
  --command 'run_dorado.sh {input_dir} {output_dir} sup'
Pipelines and redirections need a shell. Give it the paths as positional parameters rather
than inside the script, so that a path with spaces stays one word:
  --command 'sh -c "mkdir -p \\"$2/pass\\" && dorado basecaller sup \\"$1\\" --emit-fastq
             > \\"$2/pass/reads.fastq\\"" sh {input_dir} {output_dir}'
(one line; broken here to fit)
"""


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    """The flags given on the command line, over the environment and .env."""
    given: dict[str, Any] = {
        name: getattr(args, name)
        for name in AgentSettings.model_fields
        if getattr(args, name, None) is not None
    }
    return AgentSettings(**given)


def describe_error(error: ValidationError) -> list[str]:
    """One line per bad setting, named both ways it can be given."""
    lines = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"])
        flag = "--" + field.replace("_", "-")
        lines.append(f"invalid setting {flag} / {ENV_PREFIX}{field.upper()}: {problem['msg']}")
    return lines


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run a GPU-node agent: basecall the batches the manager hands out",
        description="Ask the manager for batches and run the basecaller command on each. "
        f"Every flag can also be set in the environment as {ENV_PREFIX}<FLAG>; flags win. "
        f"A manager that requires a token gets it from {ENV_PREFIX}API_TOKEN (the environment "
        "only: a flag would show in ps).",
        epilog=TEMPLATE_HELP + "\n" + EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, field in AgentSettings.model_fields.items():
        if name in ENV_ONLY:
            continue
        # --url is what `status` and `retry` call the manager's address: accepted here too.
        flags = ["--manager", "--url"] if name == "manager" else ["--" + name.replace("_", "-")]
        if field.is_required():
            default = "required"
        else:
            default = "default: unset" if field.default is None else f"default {field.default}"
        help_text = f"{field.description} (env {ENV_PREFIX}{name.upper()}; {default})"
        if field.annotation is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            value_type, metavar = _flag_type(field.annotation, name)
            parser.add_argument(*flags, type=value_type, metavar=metavar, help=help_text)
    parser.set_defaults(func=run_agent)


def _flag_type(annotation: object, name: str) -> tuple[Callable[[str], object], str]:
    """How argparse reads a setting's flag; pydantic validates the value afterwards."""
    if annotation is int:
        return int, "N"
    if annotation is float:
        return float, "SECONDS"
    if annotation == Path | None:
        return Path, "PATH"
    return str, {"manager": "URL", "engine_id": "ID", "command": "TEMPLATE"}.get(name, "VALUE")


def run_agent(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as error:
        for line in describe_error(error):
            print(f"bcmanager agent: {line}", file=sys.stderr)
        return EXIT_CONFIGURATION
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return asyncio.run(_serve(settings))


async def _serve(settings: AgentSettings) -> int:
    timeout = httpx.Timeout(settings.request_timeout)
    token = settings.api_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    try:
        verify = ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as error:
        log.error("engine=%s cannot read %sCA_FILE: %s", settings.engine_id, ENV_PREFIX, error)
        return EXIT_CONFIGURATION
    async with httpx.AsyncClient(
        base_url=str(settings.manager), timeout=timeout, headers=headers, verify=verify
    ) as client:
        agent = Agent(client, settings)
        _install_signal_handlers(agent)
        try:
            await agent.run()
        except AgentError as error:
            log.error("engine=%s job=- giving up: %s", settings.engine_id, error)
            return error.exit_code
    return 0


def _install_signal_handlers(agent: Agent) -> None:
    """First SIGTERM/SIGINT: stop cleanly and give the batch back. Second: exit at once."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        if agent.stopping:
            agent.kill_child_now()
            log.warning("second %s: exiting at once", signum.name)
            logging.shutdown()
            os._exit(128 + signum)
        agent.request_stop(signum.name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
