"""Every setting of the service, in one model.

Read from the environment with the prefix ``BCM_`` and from a ``.env`` file in the working
directory; ``.env.example`` documents each one. The CLI turns a validation error into one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as plain text, or as one JSON object per line."
    )
    api_token: SecretStr | None = Field(
        None,
        description="When set, engines must send 'Authorization: Bearer <token>' to assignwork, "
        "keepalive and completed.",
    )

    @field_validator("final_summary_dir", "api_token", mode="before")
    @classmethod
    def _empty_means_default(cls, value: object) -> object:
        """An empty variable (as in .env.example) means the default, not an empty value."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _batch_sizes_agree(self) -> Self:
        if self.default_batch_size > self.max_batch_size:
            raise ValueError(
                f"default_batch_size ({self.default_batch_size}) is larger than "
                f"max_batch_size ({self.max_batch_size})"
            )
        return self


def describe_error(error: ValidationError) -> str:
    """One line naming the first bad setting by its environment variable."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    name = f"BCM_{field.upper()}" if field else "settings"
    value = first.get("input")
    shown = "" if first["type"] == "missing" or isinstance(value, dict) else f" (got {value!r})"
    return f"invalid setting {name}: {first['msg']}{shown}"
