"""The name rules of paths.py: the bulk forms that start-up uses agree with the one-name forms."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from bcmanager.paths import is_raw_name, raw_names_among, shown, split_undecodable

# Names built from the characters that matter to the rule, so that hits are frequent. "\udce9"
# is how Python lists the byte 0xe9 of a name that is not UTF-8 (Latin-1 "é").
PARTS = [".", "/", "pod5", ".pod5", "a", "_", " ", "é", "\udce9"]
NAMES = st.lists(st.builds("".join, st.lists(st.sampled_from(PARTS), max_size=5)), max_size=20)


@given(NAMES)
def test_raw_names_among_applies_is_raw_name(names: list[str]) -> None:
    assert raw_names_among(names) == [name for name in names if is_raw_name(name)]


def test_raw_names_among_keeps_raw_files_and_drops_the_rest() -> None:
    names = ["a.pod5", ".hidden.pod5", "sub/a.pod5", "a.pod5.tmp", "b.POD5", "c.pod5"]
    assert raw_names_among(names) == ["a.pod5", "c.pod5"]


def test_names_that_are_not_utf8_are_no_raw_files() -> None:
    latin1 = os.fsdecode(b"caf\xe9.pod5")
    assert not is_raw_name(latin1)
    assert raw_names_among(["a.pod5", latin1, "café.pod5"]) == ["a.pod5", "café.pod5"]


def test_split_undecodable_checks_every_chunk() -> None:
    """An odd name far into a long listing, past the first chunks of good ones, is still found."""
    good = [f"raw_{index}.pod5" for index in range(10_000)]
    odd = os.fsdecode(b"raw_\xff.pod5")
    assert split_undecodable([*good, odd, "z.pod5"]) == ([*good, "z.pod5"], [odd])
    assert split_undecodable(good) == (good, [])


def test_shown_escapes_only_the_bytes_that_are_not_utf8() -> None:
    assert shown(os.fsdecode(b"/data/caf\xe9/r\xfcn.pod5")) == "/data/caf\\xe9/r\\xfcn.pod5"
    assert shown("/data/café/run.pod5") == "/data/café/run.pod5"
