"""The runs file: the first matching rule sets a run's settings, [defaults] and BCM_BATCH_BYTES
fill the rest, and a file that cannot be used is one line that stops the start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from bcmanager.facility.rules import DEFAULT_BATCH_BYTES, Rules, RulesError, RunSettings, parse_size
from bcmanager.sim.sequencer import SAMPLE_RATE
from conftest import Run, Server, tree

FACILITY = """
[defaults]
batch_bytes = "4 GB"
model = "dna_r10.4.1_e8.2_400bps_hac@v5.0.0"

[[run]]
match = "PROJ_A/**"
priority = 10
model = "dna_r10.4.1_e8.2_400bps_sup@v5.0.0"
modified_bases = "5mCG_5hmCG"

[[run]]
match = "*/urgent_*/**"
priority = 50
batch_bytes = "500 MiB"

[[run]]
match = "**/20261124_*"
kit = "SQK-NBD114-24"
batch_bytes = 2000000000

[[run]]
match = "."
priority = 3
"""


def rules_from(tmp_path: Path, text: str, batch_bytes: int = DEFAULT_BATCH_BYTES) -> Rules:
    path = tmp_path / "runs.toml"
    path.write_text(text)
    return Rules.load(path, batch_bytes)


def test_the_first_matching_rule_wins_and_defaults_fill_what_it_leaves_out(
    tmp_path: Path,
) -> None:
    rules = rules_from(tmp_path, FACILITY)

    # PROJ_A/** also matches the urgent and dated runs below it: the first rule wins.
    deep = rules.settings_for("PROJ_A/urgent_x/sample/20261124_1200_1A_PAO12345_abc/pod5")
    assert deep == RunSettings(
        priority=10,
        model="dna_r10.4.1_e8.2_400bps_sup@v5.0.0",
        modified_bases="5mCG_5hmCG",
        kit="",
        batch_bytes=4 * 10**9,
        rule=0,
    )
    urgent = rules.settings_for("PROJ_B/urgent_1/sample/run/pod5")
    assert (urgent.priority, urgent.batch_bytes, urgent.rule) == (50, 500 * 2**20, 1)
    assert urgent.model == "dna_r10.4.1_e8.2_400bps_hac@v5.0.0"  # from [defaults]
    dated = rules.settings_for(PurePosixPath("PROJ_B/exp/20261124_0900_2B_PAO99999_def"))
    assert (dated.kit, dated.batch_bytes, dated.priority, dated.rule) == (
        "SQK-NBD114-24",
        2 * 10**9,
        0,
        2,
    )
    # No rule: [defaults], rule None.
    other = rules.settings_for("PROJ_B/exp/20261125_0900_2B_PAO99999_def/pod5")
    assert other == RunSettings(model="dna_r10.4.1_e8.2_400bps_hac@v5.0.0", rule=None)
    # INPUT_DIR itself as the one run.
    assert rules.settings_for(".").priority == 3
    assert rules.settings_for(PurePosixPath(".")).rule == 3


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("PROJ_A/**", "PROJ_A", True),
        ("PROJ_A/**", "PROJ_A/x/y/z/pod5", True),
        ("PROJ_A/**", "PROJ_AB/x", False),
        ("**", ".", True),
        ("**", "a/b/c", True),
        ("*", "a", True),
        ("*", "a/b", False),  # one star stays within a folder name
        ("*/pod5", "run1/pod5", True),
        ("*/pod5", "exp/run1/pod5", False),
        ("**/pod5", "pod5", True),
        ("**/pod5", "exp/sample/run1/pod5", True),
        ("**/pod5", "exp/sample/run1/pod5_pass", False),
        ("exp/**/pod5_*", "exp/s/r/pod5_pass", True),
        ("run?", "run1", True),
        ("run?", "run12", False),
        ("run[12]", "run2", True),
        ("run[!12]", "run3", True),
        ("run[!12]", "run1", False),
        ("run[0-9]", "run7", True),
        ("a.b", "axb", False),  # a dot is a dot
        ("/PROJ_A/**/", "PROJ_A/r", True),  # slashes around the glob change nothing
        (".", ".", True),
        (".", "a", False),
    ],
)
def test_globs_match_whole_run_paths(tmp_path: Path, glob: str, path: str, matches: bool) -> None:
    rules = rules_from(tmp_path, f'[[run]]\nmatch = "{glob}"\npriority = 1\n')
    assert (rules.settings_for(path).rule == 0) is matches


def test_sizes_are_bytes_or_a_number_with_a_unit() -> None:
    assert parse_size(123) == 123
    assert parse_size("123") == 123
    assert parse_size("8 GB") == 8 * 10**9
    assert parse_size("8gb") == 8 * 10**9
    assert parse_size("1.5 GB") == 1_500_000_000
    assert parse_size("500 MiB") == 500 * 2**20
    assert parse_size("64kB") == 64_000
    assert parse_size("2 TiB") == 2 * 2**40
    for bad in ("", "GB", "8 GX", "-1 GB", "0", "0.1 B", "1e9", "8 G B"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)
    with pytest.raises(ValueError):
        parse_size(True)


def test_no_runs_file_gives_every_run_the_defaults() -> None:
    rules = Rules.empty(500)
    assert rules.settings_for("anything/at/all") == RunSettings(batch_bytes=500)
    assert Rules.empty().settings_for(".").batch_bytes == DEFAULT_BATCH_BYTES


def test_the_file_defaults_win_over_the_manager_setting(tmp_path: Path) -> None:
    assert rules_from(tmp_path, "", batch_bytes=7).settings_for("a").batch_bytes == 7
    with_defaults = rules_from(tmp_path, '[defaults]\nbatch_bytes = "1 kB"\n', batch_bytes=7)
    assert with_defaults.settings_for("a").batch_bytes == 1000


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[[run]]\nmatch = "A/**"\nmodel = "x"\nmodle = "y"\n', "rule 1 (match 'A/**'): unknown "),
        ('[[run]]\nmatch = "A"\n[[run]]\nmatch = "B"\npriority = "high"\n', "rule 2 (match 'B')"),
        ('[[run]]\nmatch = "A"\npriority = true\n', "priority: must be an integer"),
        ('[[run]]\nmatch = "A"\nbatch_bytes = "8 GX"\n', "batch_bytes: '8 GX' is not a size"),
        ('[[run]]\nmatch = "A"\nbatch_bytes = 0\n', "batch_bytes: 0 is not a size of at least"),
        ('[[run]]\nmatch = "A"\nbatch_bytes = 1.5\n', "batch_bytes: 1.5 is not a size"),
        ('[[run]]\nmatch = "A"\nmodel = 5\n', "rule 1 (match 'A'): model: must be a string"),
        ('[[run]]\nmatch = "A"\nkit = "a\\u0000b"\n', "kit: 'a\\x00b' holds a control character"),
        ("[[run]]\npriority = 1\n", "rule 1: match: a glob of run paths is required"),
        ('[[run]]\nmatch = "/"\n', "rule 1: match: a glob"),
        ('[defaults]\nmatch = "A"\n', "[defaults]: unknown key 'match'"),
        ("[defaults]\npriorty = 1\n", "[defaults]: unknown key 'priorty'"),
        ('[runs]\nmatch = "A"\n', "unknown section 'runs'"),
        ("defaults = 1\n", "defaults must be a table"),
        ("run = 1\n", "run must be a list of tables"),
        ('[[run]\nmatch = "A"\n', "cannot read it"),
    ],
)
def test_a_bad_file_is_one_line_naming_file_rule_and_key(
    tmp_path: Path, text: str, says: str
) -> None:
    with pytest.raises(RulesError) as error:
        rules_from(tmp_path, text)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"runs file {tmp_path / 'runs.toml'}: ")
    assert says in message


def test_a_missing_or_undecodable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read it"):
        Rules.load(tmp_path / "absent.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[[run]]\nmatch = "caf\xe9"\n')
    with pytest.raises(RulesError, match="cannot read it"):
        Rules.load(latin)


def test_serve_refuses_a_bad_runs_file_in_one_line_and_changes_nothing(
    run: Run, tmp_path: Path
) -> None:
    run.add_many(2)
    runs_file = tmp_path / "runs.toml"
    runs_file.write_text('[[run]]\nmatch = "PROJ_A/**"\nbatch_bytes = "lots"\n')
    before = tree(tmp_path)
    env = {**Server(run, tmp_path / "serve.log").env, "BCM_RUNS_FILE": str(runs_file)}

    refused = subprocess.run(
        [sys.executable, "-m", "bcmanager", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == (
        f"bcmanager: runs file {runs_file}: rule 1 (match 'PROJ_A/**'): batch_bytes: 'lots' "
        "is not a size: a number of bytes, or a number with B, kB, MB, GB, TB, KiB, MiB, GiB "
        "or TiB\n"
    )
    assert tree(tmp_path) == before  # no lock taken, no OUTPUT_DIR made
    assert not run.output_dir.exists()


def test_a_bad_batch_bytes_setting_is_one_line(run: Run, tmp_path: Path) -> None:
    env = {**Server(run, tmp_path / "serve.log").env, "BCM_BATCH_BYTES": "4 GX"}
    refused = subprocess.run(
        [sys.executable, "-m", "bcmanager", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "BCM_BATCH_BYTES" in refused.stderr
    assert run.settings(batch_bytes="500 MiB").batch_bytes == 500 * 2**20
    assert run.settings(batch_bytes="").batch_bytes == DEFAULT_BATCH_BYTES


def test_the_batches_of_a_single_run_carry_its_settings_and_what_its_files_say(
    run: Run, tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    run.add_many(1)
    runs_file = tmp_path / "runs.toml"
    runs_file.write_text(
        '[[run]]\nmatch = "PROJ_A/**"\nmodel = "not this"\n'
        '[[run]]\nmatch = "."\npriority = 7\nmodel = "sup@v5"\nmodified_bases = "6mA"\n'
        'kit = "SQK-RBK114-24"\n'
    )
    server = start_server(BCM_RUNS_FILE=str(runs_file))

    batch = server.get("/assignwork", engineid="gpu0", batchsize=1).json()

    assert batch["batch_size"] == 1
    keys = ("run_path", "priority", "model", "modified_bases", "kit")
    assert {key: batch[key] for key in keys} == {
        "run_path": ".",
        "priority": 7,
        "model": "sup@v5",
        "modified_bases": "6mA",
        "kit": "SQK-RBK114-24",
    }
    keys = ("sample_rate", "flow_cell_product", "sequencing_kit")
    assert {key: batch[key] for key in keys} == {
        "sample_rate": SAMPLE_RATE,
        "flow_cell_product": "FLO-PRO114M",
        "sequencing_kit": "SQK-LSK114",
    }
