"""Per-run settings: the runs file (``BCM_RUNS_FILE``), a TOML list of rules matched on a run's
path relative to INPUT_DIR.

The first ``[[run]]`` whose ``match`` glob fits the run's path sets that run's settings; keys it
leaves out come from ``[defaults]``, then from the manager's own settings. A run gets its
settings once, from its path alone, so the facility can decide them when it finds the run.

```toml
[defaults]
batch_bytes = "4 GB"

[[run]]
match = "PROJ_A/**"
priority = 10
model = "dna_r10.4.1_e8.2_400bps_sup@v5.0.0"
modified_bases = "5mCG_5hmCG"
```

Globs: ``*`` is any part of one folder name, ``?`` one character, ``[abc]`` one of those,
``**`` as a whole folder name any number of folders (none included: ``PROJ_A/**`` matches the
run ``PROJ_A`` itself too). ``.`` is the run when INPUT_DIR itself is one run.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from typing import Self

from bcmanager.settings import DEFAULT_BATCH_BYTES, SIZE_WORDS, Settings, parse_size

# Control characters would reach an agent's command line, where a NUL cannot even be passed.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
TEXT_KEYS = ("model", "modified_bases", "kit")
SETTING_KEYS = ("priority", *TEXT_KEYS, "batch_bytes")


class RulesError(ValueError):
    """The runs file cannot be used; the message is one line naming the file and the fault."""


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How one run is basecalled and scheduled."""

    priority: int = 0
    model: str = ""
    modified_bases: str = ""
    kit: str = ""
    batch_bytes: int = DEFAULT_BATCH_BYTES
    rule: int | None = None
    """The index of the ``[[run]]`` that matched (0: the file's first), None when none did."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[run]]``: its glob, compiled, and the settings it gives (``rule`` set)."""

    match: str
    pattern: re.Pattern[str]
    settings: RunSettings


@dataclass(frozen=True, slots=True)
class Rules:
    """The rules of a runs file, first match first, and what a run no rule matches gets."""

    rules: tuple[Rule, ...]
    default: RunSettings

    @classmethod
    def empty(cls, batch_bytes: int = DEFAULT_BATCH_BYTES) -> Self:
        """No runs file: every run gets the defaults, with batches of ``batch_bytes``."""
        return cls((), RunSettings(batch_bytes=batch_bytes))

    @classmethod
    def load(cls, path: Path, batch_bytes: int = DEFAULT_BATCH_BYTES) -> Self:
        """Read a runs file; ``batch_bytes`` is the batch size where it sets none. Raises
        RulesError with one line saying where and what is wrong."""
        try:
            with path.open("rb") as file:
                document = tomllib.load(file)
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise RulesError(f"runs file {path}: cannot read it: {error}") from error
        return cls.parse(document, str(path), batch_bytes)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The rules the manager's settings name: its runs file, or none."""
        if settings.runs_file is None:
            return cls.empty(settings.batch_bytes)
        return cls.load(settings.runs_file, settings.batch_bytes)

    @classmethod
    def parse(
        cls, document: Mapping[str, object], source: str, batch_bytes: int = DEFAULT_BATCH_BYTES
    ) -> Self:
        """Rules from a decoded runs file; ``source`` names it in errors."""
        unknown = sorted(set(document) - {"defaults", "run"})
        if unknown:
            raise RulesError(
                f"runs file {source}: unknown section {unknown[0]!r} "
                "(expected [defaults] and [[run]] entries)"
            )
        defaults = document.get("defaults", {})
        if not isinstance(defaults, dict):
            raise RulesError(f"runs file {source}: defaults must be a table, [defaults]")
        where = f"runs file {source}: [defaults]"
        base = _settings(defaults, RunSettings(batch_bytes=batch_bytes), where, allowed=())
        entries = document.get("run", [])
        if not isinstance(entries, list):
            raise RulesError(f"runs file {source}: run must be a list of tables, [[run]]")
        rules = []
        for index, entry in enumerate(entries):
            where = f"runs file {source}: rule {index + 1}"
            if not isinstance(entry, dict):
                raise RulesError(f"{where}: must be a table, [[run]]")
            match = entry.get("match")
            if not isinstance(match, str) or not match.strip("/"):
                raise RulesError(f"{where}: match: a glob of run paths is required")
            where = f"{where} (match {match!r})"
            settings = _settings(entry, base, where, allowed=("match",))
            rule_settings = replace(settings, rule=index)
            rules.append(Rule(match, compile_glob(match), rule_settings))
        return cls(tuple(rules), base)

    def settings_for(self, run_path: str | PurePath) -> RunSettings:
        """The settings of the run at ``run_path`` (relative to INPUT_DIR, ``.`` for INPUT_DIR
        itself): the first rule that matches, else the defaults."""
        path = run_path.as_posix() if isinstance(run_path, PurePath) else run_path.strip("/")
        for rule in self.rules:
            if rule.pattern.fullmatch(path or "."):
                return rule.settings
        return self.default


def _settings(
    table: Mapping[str, object], base: RunSettings, where: str, allowed: tuple[str, ...]
) -> RunSettings:
    """``base`` with what ``table`` sets; RulesError naming ``where`` and the key if a key is
    unknown or its value unfit."""
    priority, batch_bytes = base.priority, base.batch_bytes
    texts = {key: getattr(base, key) for key in TEXT_KEYS}
    for key, value in table.items():
        if key in allowed:
            continue
        if key not in SETTING_KEYS:
            known = ", ".join((*allowed, *SETTING_KEYS))
            raise RulesError(f"{where}: unknown key {key!r} (known: {known})")
        if key == "priority":
            if isinstance(value, bool) or not isinstance(value, int):
                raise RulesError(f"{where}: priority: must be an integer, not {value!r}")
            priority = value
        elif key == "batch_bytes":
            if not isinstance(value, int | str):
                raise RulesError(f"{where}: batch_bytes: {value!r} is not a size: {SIZE_WORDS}")
            try:
                batch_bytes = parse_size(value)
            except ValueError as error:
                raise RulesError(f"{where}: batch_bytes: {error}") from error
        else:
            if not isinstance(value, str):
                raise RulesError(f"{where}: {key}: must be a string, not {value!r}")
            if _CONTROL.search(value):
                raise RulesError(f"{where}: {key}: {value!r} holds a control character")
            texts[key] = value
    return RunSettings(
        priority=priority,
        model=texts["model"],
        modified_bases=texts["modified_bases"],
        kit=texts["kit"],
        batch_bytes=batch_bytes,
        rule=base.rule,
    )


def compile_glob(glob: str) -> re.Pattern[str]:
    """A run-path glob as a regular expression matching whole paths (see the module's doc)."""
    parts = glob.strip("/").split("/")
    tail = ""
    if len(parts) > 1 and parts[-1] == "**":
        parts.pop()
        tail = "(?:/.*)?"  # the folder itself, or anything below it
    pieces = []
    for number, part in enumerate(parts):
        last = number == len(parts) - 1
        if part == "**":
            pieces.append(".*" if last else "(?:[^/]+/)*")
        else:
            pieces.append(_segment(part) + ("" if last else "/"))
    return re.compile("".join(pieces) + tail, re.DOTALL)


def _segment(part: str) -> str:
    """One folder name of a glob, where no wildcard crosses a ``/``."""
    out = []
    index = 0
    while index < len(part):
        char = part[index]
        index += 1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := part.find("]", index + 1)) != -1:
            inside = part[index:end]
            negate = inside.startswith("!")
            members = re.escape(inside[1:] if negate else inside).replace(r"\-", "-")
            out.append(f"[^/{members}]" if negate else f"[{members}]")
            index = end + 1
        else:
            out.append(re.escape(char))
    return "".join(out)
