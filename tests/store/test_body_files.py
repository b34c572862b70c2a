"""SQLite's body files on their own: places, exact reads, and a cut segment refused."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mailgate.errors import StoreError
from mailgate.store.sqlite.bodies import PAGE, SPLIT_AT, BodyFiles, writes


def test_bodies_read_back_at_their_places_and_a_cut_segment_is_an_error(tmp_path: Path) -> None:
    files = BodyFiles(tmp_path / "bodies")
    bodies = [b"a" * 700, b"", b"b" * 100_000]
    places = files.append(bodies)
    assert [offset for _, offset in places] == [0, 700, 700]
    assert [files.read(n, o, len(b)) for (n, o), b in zip(places, bodies, strict=True)] == bodies
    name, offset = places[2]
    os.truncate(tmp_path / "bodies" / name, offset + 10)  # cut behind the store's back
    with pytest.raises(StoreError):
        files.read(name, offset, len(bodies[2]))
    with pytest.raises(ValueError):
        files.read("../mailgate.db", 0, 1)
    files.close()


def test_a_directory_made_by_another_process_meanwhile_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ingress processes write their first large bodies at once: both see no
    directory, one makes it first. The other once answered 451 ("File exists")."""
    directory = tmp_path / "bodies"
    directory.mkdir()  # the other process won the race...
    monkeypatch.setattr(Path, "exists", lambda self: False)  # ...after this one looked
    files = BodyFiles(directory)
    [(name, offset)] = files.append([b"x" * 600])
    files.close()
    monkeypatch.undo()
    assert BodyFiles(directory).read(name, offset, 600) == b"x" * 600


def resident_bytes(path: Path) -> int:
    """The file's bytes in the page cache, as util-linux's fincore counts them."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip())


def test_a_read_body_gives_its_whole_pages_back_and_its_neighbours_read_intact(
    tmp_path: Path,
) -> None:
    """Delivered bodies must not pile up in the page cache (each append would take fresh
    pages): a read drops the pages wholly inside the body, never a page it shares with
    the bodies beside it, whose bytes stay exact."""
    if (
        subprocess.run(
            ["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True
        ).stdout.strip()
        == "tmpfs"
    ):
        pytest.skip("tmpfs keeps its pages: there is no disk to read them back from")
    files = BodyFiles(tmp_path / "bodies")
    bodies = [b"a" * 700, b"b" * 100_000, b"c" * 50_000]
    places = files.append(bodies)
    segment = tmp_path / "bodies" / places[0][0]
    before = resident_bytes(segment)
    assert before >= sum(map(len, bodies))  # just written: all of it cached
    assert files.read(*places[1], len(bodies[1])) == bodies[1]
    whole_pages = (700 + 100_000) // PAGE - 1  # from the page after body 0's to body 2's
    assert before - resident_bytes(segment) == whole_pages * PAGE
    assert files.read(*places[0], 700) == bodies[0]
    assert files.read(*places[2], 50_000) == bodies[2]
    assert files.read(*places[1], len(bodies[1])) == bodies[1]  # again, from the disk
    files.close()


def test_large_bodies_are_written_alone_and_the_small_ones_between_them_together() -> None:
    big, small = b"B" * SPLIT_AT, b"s" * (SPLIT_AT - 1)
    bodies = [small, small, big, big, small, b"", big, small]
    out = writes(bodies)
    assert out == [small * 2, big, big, small, big, small]
    assert b"".join(out) == b"".join(bodies)  # same bytes, same places
    assert writes([]) == [] and writes([small]) == [small]
