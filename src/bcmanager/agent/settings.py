"""An agent's settings: how it finds its manager and runs its basecaller, from the environment
(``BCM_AGENT_*``, .env) and, over those, its flags; and the basecaller's command template,
split into words once and filled in for each job."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import Field, HttpUrl, PositiveFloat, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bcmanager import paths
from bcmanager.template import fill
from bcmanager.urls import base_url

ENV_PREFIX = "BCM_AGENT_"
ENV_ONLY = frozenset({"api_token"})  # secrets: a command-line flag would show in ps
RUN_PLACEHOLDERS = (
    "run_path",
    "model",
    "modified_bases",
    "kit",
    "sample_rate",
    "flow_cell_product",
    "sequencing_kit",
)
"""The keys of a batch's run that a template may name: empty when the manager did not send them."""
PLACEHOLDERS = ("input_dir", "output_dir", "jobid", "engine_id", *RUN_PLACEHOLDERS)


class AgentSettings(BaseSettings):
    """How one agent finds its manager and runs its basecaller; CLI flags override the env."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    manager: HttpUrl = Field(
        description="The manager's address: HOST:PORT or a URL, e.g. http://host:40765."
    )
    engine_id: str = Field(description="This engine's id; ends up in folder names.")
    command: str = Field(description="Basecaller command template (see below).")
    batch_size: int = Field(0, description="Files to ask for per batch; 0: the manager's default.")
    poll_interval: PositiveFloat = Field(10.0, description="Seconds to wait when there is no work.")
    until_empty: bool = Field(False, description="Exit 0 as soon as the manager has no work.")
    input_dir: Path | None = Field(None, description="INPUT_DIR as mounted on this node.")
    output_dir: Path | None = Field(None, description="OUTPUT_DIR as mounted on this node.")
    stop_grace: PositiveFloat = Field(
        10.0, description="Seconds between SIGTERM and SIGKILL when stopping the basecaller."
    )
    request_timeout: PositiveFloat = Field(10.0, description="Seconds one HTTP request may take.")
    retry_max_delay: PositiveFloat = Field(10.0, description="Longest wait between two retries.")
    give_up_after: PositiveFloat = Field(
        600.0, description="Seconds to keep retrying /assignwork or /completed before giving up."
    )
    max_failures_in_a_row: int = Field(
        3,
        ge=0,
        description="Stop asking for work (exit 4) after this many FAILED jobs in a row; "
        "a DONE resets the count; 0: never stop.",
    )
    stats_timeout: float = Field(
        300.0,
        ge=0,
        description=f"Seconds reading a done job's reads for {paths.STATS_FILE} may take "
        "(the lease is kept meanwhile); 0: no statistics.",
    )
    api_token: SecretStr | None = Field(
        None, description="The manager's BCM_API_TOKEN, sent as a bearer token."
    )
    ca_file: Path | None = Field(
        None,
        description="PEM file of the CA (or self-signed certificate) that an https manager's "
        "certificate must verify against; unset: the system's CAs. Never unchecked.",
    )

    @field_validator("manager", mode="before")
    @classmethod
    def _manager_as_typed(cls, value: object) -> object:
        return base_url(value) if isinstance(value, str) else value

    @field_validator("engine_id")
    @classmethod
    def _engine_id_is_a_folder_name_part(cls, value: str) -> str:
        if not paths.is_engine_id(value):
            raise ValueError("only letters, digits, '.', '-' and '_' (at most 100), never a path")
        return value

    @field_validator("command")
    @classmethod
    def _command_splits(cls, value: str) -> str:
        split_template(value)
        return value

    @field_validator("api_token", "ca_file", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("input_dir", "output_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.absolute()


def split_template(template: str) -> list[str]:
    """The template's words, split before substitution so that a path with spaces stays whole."""
    words = shlex.split(template)
    if not words:
        raise ValueError("the command is empty")
    return words


def render_command(words: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """The argv of one job: the placeholders replaced in each word, all else verbatim."""
    return fill(words, {name: values[name] for name in PLACEHOLDERS if name in values})
