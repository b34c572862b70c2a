"""SQLite's body files on their own: places, exact reads, and a cut segment refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailgate.errors import StoreError
from mailgate.store.sqlite.bodies import BodyFiles


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
