"""What an agent tells: one log line per event, always naming the engine and the job."""

from __future__ import annotations

import logging

# The package's name, whichever module tells: one logger for every line of the agent.
log = logging.getLogger("bcmanager.agent")


def event(
    engine_id: str, what: str, jobid: str = "-", *, level: int = logging.INFO, **details: object
) -> None:
    """Log ``what`` happened to job ``jobid`` of engine ``engine_id``; None details left out."""
    extra = "".join(f" {key}={value}" for key, value in details.items() if value is not None)
    log.log(level, "engine=%s job=%s %s%s", engine_id, jobid, what, extra)
