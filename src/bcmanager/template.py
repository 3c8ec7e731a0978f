"""Command templates: the words of a command, split once, with ``{name}`` placeholders filled in
each word in one pass, so a value that holds braces is never filled again. The agent fills its
basecaller's command with them, the facility a run's completion command."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence


def fill(words: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """The argv: each ``{name}`` of ``values`` replaced in each word, all else verbatim."""
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    return [pattern.sub(lambda match: values[match[1]], word) for word in words]
