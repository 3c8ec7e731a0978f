"""The systemd units for a standalone server, and the Dorado wrapper every deployment uses.

systemd-analyze verifies each unit as systemd would load it, with ExecStart pointed at the
bcmanager installed here; the environment files may only name settings the programs read.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bcmanager.agent.settings import ENV_PREFIX, AgentSettings
from bcmanager.cli.serve import exposure_refusal
from bcmanager.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "deploy" / "systemd"
DORADO_BATCH = REPO / "deploy" / "dorado-batch.sh"
INSTALLED_COMMAND = "/opt/bcmanager/.venv/bin/bcmanager"
AGENT_ENV = {f"{ENV_PREFIX}{name.upper()}" for name in AgentSettings.model_fields}
REQUIRED_AGENT_ENV = {"BCM_AGENT_MANAGER", "BCM_AGENT_ENGINE_ID", "BCM_AGENT_COMMAND"}


def env_file(path: Path) -> dict[str, str]:
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            entries[name] = value
    return entries


def unit_lines(name: str, key: str) -> list[str]:
    prefix = f"{key}="
    return [
        line.removeprefix(prefix)
        for line in (SYSTEMD / name).read_text().splitlines()
        if line.startswith(prefix)
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
@pytest.mark.parametrize("unit", ["bcmanager.service", "bcmanager-agent@.service"])
def test_the_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    bcmanager = Path(sys.executable).with_name("bcmanager")
    text = (SYSTEMD / unit).read_text()
    assert INSTALLED_COMMAND in text
    (tmp_path / unit).write_text(text.replace(INSTALLED_COMMAND, str(bcmanager)))
    instance = unit.replace("@.", "@0.")
    if instance != unit:
        (tmp_path / instance).symlink_to(tmp_path / unit)

    verified = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", instance],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert verified.returncode == 0, verified.stderr
    assert verified.stderr == ""


def test_the_manager_unit_reads_settings_the_app_knows() -> None:
    (environment_file,) = unit_lines("bcmanager.service", "EnvironmentFile")
    settings = env_file(SYSTEMD / Path(environment_file).name)

    assert set(settings) <= {f"BCM_{name.upper()}" for name in Settings.model_fields}
    Settings.model_validate(
        {name.removeprefix("BCM_").lower(): value for name, value in settings.items()}
    )
    assert unit_lines("bcmanager.service", "ExecStart") == [f"{INSTALLED_COMMAND} serve"]


def test_each_agent_instance_gets_its_gpu_an_engine_id_and_the_rest_from_its_file() -> None:
    (environment_file,) = unit_lines("bcmanager-agent@.service", "EnvironmentFile")
    from_file = env_file(SYSTEMD / Path(environment_file).name)
    from_unit = dict(
        line.split("=", 1) for line in unit_lines("bcmanager-agent@.service", "Environment")
    )

    agent_env = {**from_file, **from_unit}
    assert from_unit["CUDA_VISIBLE_DEVICES"] == "%i"
    assert REQUIRED_AGENT_ENV <= set(agent_env) <= AGENT_ENV | {"DORADO", "CUDA_VISIBLE_DEVICES"}
    # systemd fills in %l (short host name) and %i (instance: the GPU's index).
    instance = {
        name: value.replace("%l", "gpuserver").replace("%i", "0")
        for name, value in agent_env.items()
    }
    AgentSettings.model_validate(
        {
            name.removeprefix(ENV_PREFIX).lower(): value
            for name, value in instance.items()
            if name.startswith(ENV_PREFIX)
        }
    )
    command = shlex.split(from_file["BCM_AGENT_COMMAND"])
    assert command[:3] == ["/opt/bcmanager/deploy/dorado-batch.sh", "{input_dir}", "{output_dir}"]
    assert unit_lines("bcmanager-agent@.service", "ExecStart") == [f"{INSTALLED_COMMAND} agent"]


def test_dorado_batch_sends_dorado_fastq_to_pass(tmp_path: Path) -> None:
    fake_dorado = tmp_path / "dorado"
    fake_dorado.write_text('#!/bin/sh\necho "args: $*"\nprintf "@r1\\nACGT\\n+\\n!!!!\\n"\n')
    fake_dorado.chmod(0o755)
    job_input, job_output = tmp_path / "ASSIGNED_1_gpu0", tmp_path / "TMPOUTPUT_1_gpu0"
    job_input.mkdir()
    job_output.mkdir()

    done = subprocess.run(
        [str(DORADO_BATCH), str(job_input), str(job_output), "hac", "--min-qscore", "9"],
        env={**os.environ, "DORADO": str(fake_dorado)},
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 0, done.stderr
    args, *record = (job_output / "pass" / "reads.fastq").read_text().splitlines()
    assert args == f"args: basecaller hac --min-qscore 9 {job_input} --emit-fastq"
    assert record == ["@r1", "ACGT", "+", "!!!!"]


def test_dorado_batch_fails_the_job_when_dorado_fails(tmp_path: Path) -> None:
    fake_dorado = tmp_path / "dorado"
    fake_dorado.write_text("#!/bin/sh\necho 'no GPU' >&2\nexit 3\n")
    fake_dorado.chmod(0o755)

    done = subprocess.run(
        [str(DORADO_BATCH), str(tmp_path), str(tmp_path / "out"), "hac"],
        env={**os.environ, "DORADO": str(fake_dorado)},
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 3
    assert "no GPU" in done.stderr


def test_the_commented_tls_and_token_lines_let_the_manager_listen_beyond_loopback() -> None:
    """Uncommented, the lines bcmanager.env offers make a manager that starts on 0.0.0.0, and
    agent.env offers the matching token and CA file."""
    offered = [
        line.removeprefix("# ")
        for line in (SYSTEMD / "bcmanager.env").read_text().splitlines()
        if re.match(r"# BCM_[A-Z_]+=", line)
    ]
    settings = {**env_file(SYSTEMD / "bcmanager.env"), "BCM_HOST": "0.0.0.0"}
    settings.update(line.split("=", 1) for line in offered)
    agent_lines = (SYSTEMD / "agent.env").read_text()

    assert (
        exposure_refusal(
            Settings.model_validate(
                {name.removeprefix("BCM_").lower(): value for name, value in settings.items()}
            )
        )
        is None
    )
    assert {"BCM_OPERATOR_TOKEN", "BCM_READ_TOKEN"} <= set(settings)
    assert f"# BCM_AGENT_CA_FILE={settings['BCM_TLS_CERTFILE']}" in agent_lines
    assert "# BCM_AGENT_API_TOKEN=" in agent_lines
