"""The name rules of paths.py: the bulk forms that start-up uses agree with the one-name forms."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bcmanager.paths import is_raw_name, raw_names_among

# Names built from the characters that matter to the rule, so that hits are frequent.
NAMES = st.lists(
    st.builds(
        "".join,
        st.lists(st.sampled_from([".", "/", "pod5", ".pod5", "a", "_", " ", "é"]), max_size=5),
    ),
    max_size=20,
)


@given(NAMES)
def test_raw_names_among_applies_is_raw_name(names: list[str]) -> None:
    assert raw_names_among(names) == [name for name in names if is_raw_name(name)]


def test_raw_names_among_keeps_raw_files_and_drops_the_rest() -> None:
    names = ["a.pod5", ".hidden.pod5", "sub/a.pod5", "a.pod5.tmp", "b.POD5", "c.pod5"]
    assert raw_names_among(names) == ["a.pod5", "c.pod5"]
