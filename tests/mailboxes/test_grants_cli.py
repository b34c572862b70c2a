"""`mailgate grants list|delete`: what an operator sees of the connected mailboxes (never
their credentials) and how one is removed."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet

from mailgate.mailboxes.grants import seal
from mailgate.mailboxes.models import AuthMethod, Credentials
from mailgate.secretbox import SecretBox
from mailgate.store import open_store
from tests.store.test_grants import a_grant
from tests.test_cli import mailgate


async def test_grants_are_listed_without_secrets_and_deleted(tmp_path: Path) -> None:
    done = mailgate("init", "--dir", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    cfg = str(tmp_path / "mailgate.toml")
    store = open_store(f"sqlite:///{tmp_path / 'data' / 'mailgate.db'}")
    await store.open()
    grant = a_grant("k1", "ann@example.com")
    box = SecretBox(Fernet.generate_key())
    await store.add_grant(grant, seal(box, Credentials(AuthMethod.PASSWORD, "hunter2-secret")))
    await store.close()

    wide = {"COLUMNS": "250"}  # rich fits the table to the terminal
    listed = mailgate("grants", "list", "-c", cfg, cwd=tmp_path, env=wide)
    assert listed.returncode == 0, listed.stderr
    assert grant.id in listed.stdout and "ann@example.com" in listed.stdout
    assert "hunter2" not in listed.stdout

    assert mailgate("grants", "delete", grant.id, "-c", cfg, cwd=tmp_path).returncode == 0
    again = mailgate("grants", "delete", grant.id, "-c", cfg, cwd=tmp_path)
    assert again.returncode == 1 and "no grant" in again.stderr
    assert grant.id not in mailgate("grants", "list", "-c", cfg, cwd=tmp_path, env=wide).stdout
