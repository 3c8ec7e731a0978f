"""Raw files named in bytes that are not UTF-8, told to the operator once each.

A POD5 file copied from a Latin-1 share keeps a name like ``caf\\xe9.pod5``. No JSON reply can
carry that name to an engine, so such a file is never offered (``paths.is_raw_name``). Left at
that, it would simply never be basecalled, without a word; logged at every rescan, it would fill
the log. So each is named once, when a listing first finds it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bcmanager.paths import shown

log = logging.getLogger(__name__)


class UndecodableNames:
    """The undecodable names of INPUT_DIR's last listing. A name is forgotten once it is gone
    (renamed, as the warning asks), so this holds no more than the folder does."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._known: frozenset[str] = frozenset()

    def report(self, names: list[str]) -> None:
        """Warn about each of ``names`` not found by the listing before."""
        present = frozenset(names)
        for name in sorted(present - self._known):
            log.warning(
                "never offered: %s is named in bytes that are not UTF-8 (shown here as \\xNN), "
                "which no reply to an engine can carry; rename it to have it basecalled",
                shown(str(self.folder / name)),
            )
        self._known = present
