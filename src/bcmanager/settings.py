"""Every setting of the service, in one model.

Read from the environment with the prefix ``BCM_`` and from a ``.env`` file in the working
directory; ``.env.example`` documents each one. The CLI turns a validation error into one line.
"""

from __future__ import annotations

import re
import ssl
import sys
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    AnyHttpUrl,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BATCH_BYTES = 4 * 10**9
"""What a batch holds at most when no setting says otherwise: a few minutes of a GPU's work."""

SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
SIZE_WORDS = "a number of bytes, or a number with B, kB, MB, GB, TB, KiB, MiB, GiB or TiB"
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


def parse_size(value: int | str) -> int:
    """Bytes from an int or a text like ``8 GB`` or ``500 MiB``; ValueError if neither, or not
    at least one byte."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size: {SIZE_WORDS}")
    if isinstance(value, int):
        size = value
    else:
        found = _SIZE.fullmatch(value)
        unit = SIZE_UNITS.get(found[2].lower() or "b") if found else None
        if found is None or unit is None:
            raise ValueError(f"{value!r} is not a size: {SIZE_WORDS}")
        size = round(float(found[1]) * unit)
    if size < 1:
        raise ValueError(f"{value!r} is not a size of at least one byte")
    return size


class Settings(BaseSettings):
    """Where the run lives and how the manager paces its engines."""

    model_config = SettingsConfigDict(
        env_prefix="BCM_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    input_dir: Path = Field(description="Folder the sequencer writes POD5 files into.")
    output_dir: Path = Field(description="Folder that receives pass/ and fail/ FASTQ.")
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(40765, ge=1, le=65535, description="Port to listen on (the original's).")
    default_batch_size: PositiveInt = Field(
        10, description="Files per batch when an engine asks for batchsize <= 0."
    )
    max_batch_size: PositiveInt = Field(1000, description="Largest batch handed to one engine.")
    report_back_period: PositiveInt = Field(
        90, description="Seconds a lease lasts after the last keepalive."
    )
    shutdown_interval: PositiveFloat = Field(
        100.0, description="Seconds without engine calls before /heartbeat says idle."
    )
    rescan_interval: PositiveFloat = Field(
        30.0, description="Seconds between full rescans of INPUT_DIR (catches missed events)."
    )
    force_polling: bool = Field(
        False, description="Poll INPUT_DIR instead of using inotify (network filesystems)."
    )
    final_summary_dir: Path | None = Field(
        None,
        description="Folder where MinKNOW writes final_summary_*.txt when sequencing stops "
        "(default: INPUT_DIR and its parent).",
    )
    final_summary_grace: PositiveFloat = Field(
        3600.0,
        description="Seconds a run whose final summary counts more POD5 files than were seen "
        "waits for the rest (they may still be landing); then it is finished without them, "
        "and the log says how many were never seen.",
    )
    run_folder_pattern: str = Field(
        r"[0-9]{8}_[0-9]{4}_.+_[0-9a-fA-F]{8}",
        description="A folder under INPUT_DIR whose whole name matches this regular "
        "expression is one run (MinKNOW's YYYYMMDD_HHMM_<position>_<flow cell>_<hash>); its "
        "folders that hold POD5 files are its raw folders. Elsewhere, a folder that holds POD5 "
        "files itself is a run.",
    )
    discovery_depth: PositiveInt = Field(
        8, description="How many folders deep below INPUT_DIR runs are looked for."
    )
    on_run_complete: str | None = Field(
        None,
        description="Command run once when a run is complete, e.g. 'notify.sh {output_dir}': "
        "placeholders {run_path}, {run_dir}, {output_dir}; its exit status is recorded in "
        "the run's output folder, and it is never run twice for one run. It runs with the "
        "manager's environment but for its BCM_ settings (no token reaches it).",
    )
    on_run_complete_timeout: PositiveFloat = Field(
        3600.0,
        description="Seconds a completion command (BCM_ON_RUN_COMPLETE) may run: then it is "
        "killed with its process group (every process it started), as it is when the manager "
        "stops.",
    )
    account_reads: bool = Field(
        True,
        description="Check each DONE against its raw files' read ids before it is committed "
        "(every read out once, reads files whole). Off: a DONE is trusted as the engine says, "
        "and a file Dorado skipped, or a reads file cut short, is marked done; only for a "
        "manager that cannot read the raw files and the output at their speed.",
    )
    may_drop_reads: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="The share of a raw file's reads the basecaller may leave out on purpose "
        "(e.g. Dorado's --min-qscore without --output-dir drops reads below it) before the "
        "file is rejected; 0: every read must come out.",
    )
    quarantine_attempts: PositiveInt = Field(
        3,
        description="Failed attempts of a file alone, on one engine, after which it is "
        "quarantined when no other engine works (with two engines, one failure on each).",
    )
    bench_after: PositiveInt = Field(
        3, description="Failed jobs in a row, while others succeed, that bench an engine."
    )
    bench_seconds: PositiveFloat = Field(
        60.0, description="Seconds a benched engine gets no work; doubles each time again."
    )
    bench_longest_seconds: PositiveFloat = Field(
        3600.0, description="The longest a benched engine gets no work at a time."
    )
    runs_file: Path | None = Field(
        None,
        description="TOML file of per-run rules (priority, model, modified bases, kit, batch "
        "size); the first whose glob matches a run's path wins. Unset: no rules.",
    )
    batch_bytes: PositiveInt = Field(
        DEFAULT_BATCH_BYTES,
        description="Bytes of raw files a batch holds at most, for runs the runs file gives no "
        "batch_bytes: a number, or one with a unit, e.g. '4 GB' or '500 MiB'.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as plain text, or as one JSON object per line."
    )
    api_token: SecretStr | None = Field(
        None,
        description="The engine token: when set, engines must send 'Authorization: Bearer "
        "<token>' to assignwork, keepalive and completed.",
    )
    operator_token: SecretStr | None = Field(
        None,
        description="The operator token: when set, the routes that change a run (POST /retry) "
        "require it; it also opens the read routes. Unset: they require BCM_API_TOKEN, if set.",
    )
    read_token: SecretStr | None = Field(
        None,
        description="The read token: when set, /status, /metrics, the page and the docs "
        "require it (or the operator token); browsers log in at /login.",
    )
    tls_certfile: Path | None = Field(
        None, description="PEM certificate (chain) to serve HTTPS with; needs BCM_TLS_KEYFILE."
    )
    tls_keyfile: Path | None = Field(None, description="PEM private key of BCM_TLS_CERTFILE.")
    notify_url: AnyHttpUrl | None = Field(
        None,
        description="URL that receives a JSON POST (with a 'text' line chat webhooks show) when "
        "a run finishes sequencing or completes, a file is quarantined or an engine benched.",
    )
    trusted_network: bool = Field(
        False,
        description="true: listen beyond loopback without TLS or without BCM_API_TOKEN (only "
        "on a network where every host that reaches the port may drive the run).",
    )

    @field_validator(
        "final_summary_dir",
        "on_run_complete",
        "runs_file",
        "api_token",
        "operator_token",
        "read_token",
        "tls_certfile",
        "tls_keyfile",
        "notify_url",
        mode="before",
    )
    @classmethod
    def _empty_means_default(cls, value: object) -> object:
        """An empty variable (as in .env.example) means the default, not an empty value."""
        return None if value == "" else value

    @field_validator("batch_bytes", mode="before")
    @classmethod
    def _size_with_unit(cls, value: object) -> object:
        """A size with a unit, as in the runs file; empty (as in .env.example): the default."""
        if isinstance(value, str):
            return parse_size(value) if value.strip() else DEFAULT_BATCH_BYTES
        return value

    @field_validator("run_folder_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a regular expression: {error}") from None
        return value

    @model_validator(mode="after")
    def _batch_sizes_agree(self) -> Self:
        if self.default_batch_size > self.max_batch_size:
            raise ValueError(
                f"default_batch_size ({self.default_batch_size}) is larger than "
                f"max_batch_size ({self.max_batch_size})"
            )
        return self

    @model_validator(mode="after")
    def _certificate_and_key_together(self) -> Self:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("BCM_TLS_CERTFILE and BCM_TLS_KEYFILE are set together or not at all")
        return self

    @property
    def run_folder(self) -> re.Pattern[str]:
        return re.compile(self.run_folder_pattern)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_certfile is not None else "http"


class ClientSettings(BaseSettings):
    """What the commands that call a manager (``status``, ``retry``) need besides its address:
    the CA that signed its certificate and the tokens to send, from the same ``BCM_`` variables
    and ``.env`` as the manager's, so that one set-up serves both on the manager's host."""

    model_config = SettingsConfigDict(
        env_prefix="BCM_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    ca_file: Path | None = Field(
        None,
        description="PEM file of the CA (or the self-signed certificate) to verify an https "
        "manager with; unset: the system's CAs.",
    )
    api_token: SecretStr | None = None
    operator_token: SecretStr | None = None
    read_token: SecretStr | None = None

    @field_validator("ca_file", "api_token", "operator_token", "read_token", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        return None if value == "" else value

    def verify(self) -> ssl.SSLContext:
        """The TLS check of every client: the system's CAs, or only ``ca_file``; never off."""
        return ssl.create_default_context(cafile=self.ca_file)

    def bearer(self, *names: str) -> dict[str, str]:
        """The Authorization header with the first of the tokens ``names`` that is set."""
        for name in names:
            token: SecretStr | None = getattr(self, name)
            if token is not None:
                return {"Authorization": f"Bearer {token.get_secret_value()}"}
        return {}


def describe_error(error: ValidationError) -> str:
    """One line naming the first bad setting by its environment variable."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    name = f"BCM_{field.upper()}" if field else "settings"
    value = first.get("input")
    shown = "" if first["type"] == "missing" or isinstance(value, dict) else f" (got {value!r})"
    return f"invalid setting {name}: {first['msg']}{shown}"


def load_settings(overrides: dict[str, Any]) -> Settings | None:
    """Settings from env, .env and ``overrides``; None after printing one line if invalid."""
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        print(f"bcmanager: {describe_error(error)}", file=sys.stderr)
        return None
