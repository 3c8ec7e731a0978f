"""Runs an operator moves are followed: a raw folder moved to other storage and replaced by a
symlink is served through it after a restart, and a run moved to another folder while one of
its jobs is leased is served from its new place, that job given back, nothing basecalled twice
and its old path gone; one moved while no manager watched takes its output along at the next
start. Each against a real ``bcmanager serve``."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_facility import serving

from bcmanager.facility.discovery import Found, Layout, discover
from bcmanager.settings import Settings
from bcmanager.sim.sequencer import write_pod5
from conftest import Root, wait_for
from served_root import (
    Served,
    assign,
    basecall,
    complete,
    drain,
    reads_everywhere,
    runs,
    wait_for_run,
)


@pytest.fixture
def served(root: Root, tmp_path: Path) -> Iterator[Served]:
    serving = Served(root, tmp_path)
    yield serving
    serving.close()


def test_a_raw_folder_moved_to_other_storage_behind_a_symlink_is_served_through_it(
    root: Root, served: Served, tmp_path: Path
) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    first = root.add(folder / "pod5", 2)
    path = folder.relative_to(root.input_dir).as_posix()
    server = served.start()
    done = assign(server, 2)
    basecall(root, done)
    assert complete(server, done["jobid"]).json() == {"ok": True}
    server.stop()

    bigger = tmp_path / "bigger_storage"
    bigger.mkdir()
    shutil.move(folder / "pod5", bigger / "pod5")
    (folder / "pod5").symlink_to(bigger / "pod5")
    late = root.add(folder / "pod5", 1)
    server = served.start()
    wait_for_run(server, path, 10, "the run behind its symlink", done=2, pending=1)
    assert [batch["batch"] for batch in drain(server, root)] == [[late[0].name]]
    merged = reads_everywhere(root.output_dir)
    assert sorted(merged) == sorted(read for raw in [*first, *late] for read in root.reads[raw])
    assert all(len(where) == 1 for where in merged.values()), "a read merged twice"


def test_a_run_moved_while_a_job_is_leased_is_followed_and_nothing_is_basecalled_twice(
    root: Root, served: Served
) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 3)
    server = served.start()
    leased = assign(server, 1)
    basecall(root, leased)  # the engine is done, and about to say so

    moved = root.input_dir / "exp" / "s1_moved" / folder.name
    moved.parent.mkdir()
    folder.rename(moved)
    root.reads = {moved / raw.relative_to(folder): reads for raw, reads in root.reads.items()}
    new = moved.relative_to(root.input_dir).as_posix()
    wait_for(lambda: set(runs(server)) == {new}, 10, "the run at its new path, and only there")

    answer = complete(server, leased["jobid"])
    drained = drain(server, root)
    offered = [name for batch in drained for name in batch["batch"]]
    if answer.json() == {"ok": True}:
        assert leased["batch"][0] not in offered, "done, yet offered again"
    else:
        assert answer.status_code == 409, answer.text
        assert leased["batch"][0] in offered, "given back, so offered again"
    assert runs(server)[new]["files"]["done"] == 3
    merged = reads_everywhere(root.output_dir)
    assert sorted(merged) == sorted(root.reads_in(moved))
    assert all(
        len(places) == 1 and places[0].startswith(f"{new}/pass/") for places in merged.values()
    ), "every read once, in the run's output at its new path"
    assert set(runs(server)) == {new}


def test_a_run_moved_while_the_manager_was_down_takes_its_output_along(
    root: Root, served: Served
) -> None:
    """A kill -9 right after an operator moved a run (before discovery saw it): the next start
    finds the run at its new path only, and its output must come from the old one, or its
    done files' reads would be outside its output for good."""
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 3)
    server = served.start()
    done = assign(server, 2)
    basecall(root, done)
    assert complete(server, done["jobid"]).json() == {"ok": True}
    server.kill()

    moved = root.input_dir / "exp" / "s1_moved" / folder.name
    moved.parent.mkdir()
    folder.rename(moved)
    root.reads = {moved / raw.relative_to(folder): reads for raw, reads in root.reads.items()}
    new = moved.relative_to(root.input_dir).as_posix()
    server = served.start()
    wait_for_run(server, new, 10, "the run at its new path", done=2, pending=1)
    assert len(drain(server, root)) == 1
    merged = reads_everywhere(root.output_dir)
    assert sorted(merged) == sorted(root.reads_in(moved))
    assert all(
        len(places) == 1 and places[0].startswith(f"{new}/pass/") for places in merged.values()
    ), "every read once, in the run's output at its new path"
    assert not (root.output_dir / folder.relative_to(root.input_dir)).exists()
    assert "followed run=" in served.log()


def test_links_out_of_the_root_are_followed_once_never_in_a_circle_nor_back_in(
    root: Root, tmp_path: Path
) -> None:
    outside = tmp_path / "bigger_storage" / "pod5"
    outside.mkdir(parents=True)
    write_pod5(outside / "a.pod5", 1)
    (outside / "again").symlink_to(outside)  # a circle
    (outside / "back").symlink_to(root.input_dir)  # back into the root
    folder = root.run("exp", "s1", "FAX11111")
    (folder / "pod5").symlink_to(outside)
    (root.input_dir / "shortcut").symlink_to(folder)  # within the root: found by its own path
    path = folder.relative_to(root.input_dir).as_posix()
    layout = Layout(re.compile(Settings.model_fields["run_folder_pattern"].default), 8)
    assert discover(root.input_dir.resolve(), layout) == [Found(path, f"{path}/pod5", True)]


async def test_two_links_to_one_folder_serve_it_once(root: Root, tmp_path: Path) -> None:
    outside = tmp_path / "bigger_storage" / "pod5"
    outside.mkdir(parents=True)
    write_pod5(outside / "a.pod5", 1)
    for flow_cell in ("FAX11111", "FAX22222"):
        (root.run("exp", "s1", flow_cell) / "pod5").symlink_to(outside)
    async with serving(root.settings()) as (client, facility):
        assert len(facility.registry.managers) == 1
        first = await client.get("/assignwork", params={"engineid": "gpu1", "batchsize": 10})
        again = await client.get("/assignwork", params={"engineid": "gpu2", "batchsize": 10})
    assert first.json()["batch"] == ["a.pod5"] and again.json()["batch"] == []
