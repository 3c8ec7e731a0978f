"""Why an agent stops before it is told to, each with the exit code that says it (the command's
help lists them)."""

from __future__ import annotations

EXIT_CONFIGURATION = 2
EXIT_CANNOT_RUN = 3
EXIT_FAILURES_IN_A_ROW = 4


class AgentError(Exception):
    """The agent cannot go on; the message says why, for the operator."""

    exit_code = 1


class ConfigurationError(AgentError):
    """This node is set up wrongly (paths, command): asking again would fail the same way."""

    exit_code = EXIT_CONFIGURATION


class BasecallerCannotRun(ConfigurationError):
    """The command cannot start here, or a shell says it cannot run it (exit 126 or 127)."""

    exit_code = EXIT_CANNOT_RUN


class TooManyFailures(AgentError):
    """Job after job failed on this node: the node, not the batches, is the likely cause."""

    exit_code = EXIT_FAILURES_IN_A_ROW


class ManagerUnreachable(AgentError):
    """Retrying a call ran out of time."""


class ProtocolViolation(AgentError):
    """The manager answered outside the contract of docs/protocol.md."""
