"""The JSON the service sends, as Pydantic models, so /docs and openapi/openapi.json describe it.

The first four are the wire contract of PROTOCOL.md: their keys and value types are fixed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class BCBatch(BaseModel):
    """A batch of raw files leased to one engine (jobid "-1" and batch_size 0: no work now)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "report_back_period": 90,
                    "report_back_interval": 90,
                    "jobid": "262817286294989972663956585584100365723",
                    "job_input_dir": "ASSIGNED_262817286294989972663956585584100365723_gpu004",
                    "job_output_dir": "TMPOUTPUT_262817286294989972663956585584100365723_gpu004",
                    "bc_engine_id": "gpu004",
                    "batch_size": 2,
                    "batch": ["a.pod5", "b.pod5"],
                    "input_dir": "/data/run1/pod5",
                    "output_dir": "/data/run1/basecalled",
                }
            ]
        }
    )

    report_back_period: int = Field(description="Seconds the lease lasts after a keepalive.")
    report_back_interval: int = Field(description="Same as report_back_period (clients read it).")
    jobid: str = Field(description="Decimal job id; '-1' when there is no work.")
    job_input_dir: str = Field(
        description="Folder of symlinks to the batch, relative to input_dir."
    )
    job_output_dir: str = Field(description="Folder for the job's FASTQ, relative to output_dir.")
    bc_engine_id: str = Field(description="The engine the batch is leased to.")
    batch_size: int = Field(description="Number of files in batch; 0 means nothing to do now.")
    batch: list[str] = Field(description="Raw file names, oldest first.")
    input_dir: str = Field(description="The manager's INPUT_DIR, absolute.")
    output_dir: str = Field(description="The manager's OUTPUT_DIR, absolute.")


class KeepaliveReply(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"late": False}]})

    late: bool = Field(description="True: the manager no longer holds this job; stop it.")


class CompletedReply(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"ok": True}]})

    ok: bool = Field(description="Always true: the completion is recorded (or was already).")


class HeartbeatReply(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "false", "inactivity_interval": 12.5}]}
    )

    status: Literal["true", "false"] = Field(
        description='The string "true" once no engine called for BCM_SHUTDOWN_INTERVAL seconds.'
    )
    inactivity_interval: float = Field(description="Seconds since the last engine call.")
    problems: list[str] = Field(
        default_factory=list, description="Why the manager cannot work (with a 503 reply)."
    )


class ReadyReply(BaseModel):
    ready: bool = Field(description="True once start-up recovery and the first scan are done.")


class FileCounts(BaseModel):
    waiting: int = Field(description="Seen but not complete yet.")
    pending: int = Field(description="Complete, queued for an engine.")
    leased: int = Field(description="In the batch of a live job.")
    done: int = Field(description="FASTQ final.")
    failed: int = Field(description="Set aside after a failed job.")


class LeasedJob(BaseModel):
    jobid: str
    engine: str
    state: str = Field(description="ASSIGNED, STARTED or PROCESSING, as last reported.")
    files: list[str]
    seconds_left: float = Field(description="Seconds until the lease runs out.")


class RunStatus(BaseModel):
    input_dir: str
    output_dir: str
    ready: bool = Field(description="False while the first scan of INPUT_DIR is running.")
    files: FileCounts
    jobs: list[LeasedJob] = Field(description="Jobs holding a lease now.")


class ErrorReply(BaseModel):
    detail: str = Field(description="What is wrong; nothing was changed.")
