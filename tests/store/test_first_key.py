"""The first serve on a store without any key makes an admin key (issue 17: `init`
wrote its key into SQLite, the config then named PostgreSQL)."""

from __future__ import annotations

import pytest

from mailgate import keys
from mailgate.app import first_admin_key
from mailgate.models import Scope
from mailgate.store import Store


async def test_the_first_serve_on_a_store_without_keys_makes_an_admin_key(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """`init` writes its key where its config points (SQLite); a server then pointed at
    PostgreSQL would have none: the first serve makes one, printed once."""
    await first_admin_key(store)
    secret = capsys.readouterr().err.strip().splitlines()[-1]
    key = await keys.authenticate(store, secret)
    assert key is not None and key.has(Scope.ADMIN)
    await first_admin_key(store)
    assert capsys.readouterr().err == "" and len(await store.list_keys()) == 1
