"""Temporary: replaced by the rules branch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class RulesError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class RunSettings:
    priority: int = 0
    model: str = ""
    modified_bases: str = ""
    kit: str = ""
    batch_bytes: int = 4_000_000_000
    rule: int | None = None


class Rules:
    def __init__(self, batch_bytes: int) -> None:
        self.batch_bytes = batch_bytes

    @classmethod
    def load(cls, path: Path) -> Rules:
        return cls(4_000_000_000)

    @classmethod
    def empty(cls, batch_bytes: int) -> Rules:
        return cls(batch_bytes)

    def settings_for(self, run_path: str) -> RunSettings:
        return RunSettings(batch_bytes=self.batch_bytes)
