"""The first serve on a store without any key makes an admin key (issue 17: `init`
wrote its key into SQLite, the config then named PostgreSQL)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mailgate import keys
from mailgate.app import first_admin_key
from mailgate.models import Scope
from mailgate.store import Store


async def test_the_first_serve_on_a_store_without_keys_makes_an_admin_key(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`init` writes its key where its config points (SQLite); a server then pointed at
    PostgreSQL would have none: the first serve makes one, its secret in a file only the
    owner reads (never in the log), the path said on stderr."""
    path = await first_admin_key(store, tmp_path)
    assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    said = capsys.readouterr().err
    assert str(path) in said and secret not in said
    key = await keys.authenticate(store, secret)
    assert key is not None and key.has(Scope.ADMIN)
    assert await first_admin_key(store, tmp_path) is None
    assert capsys.readouterr().err == "" and len(await store.list_keys()) == 1
