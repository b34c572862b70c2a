"""Start-up failures an operator can meet, each said in one line naming the cause and
what to do, with exit status 2 (issue 17): a port taken, the data directory unusable,
the database unreachable or newer than the code, the certificate missing."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli import mailgate


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    assert mailgate("init", "--dir", str(tmp_path), cwd=tmp_path).returncode == 0
    yield tmp_path / "mailgate.toml"


def serve(config: Path, **env: str) -> tuple[int, list[str]]:
    done = mailgate("serve", "-c", str(config), cwd=config.parent, env=env, timeout=60)
    return done.returncode, done.stderr.strip().splitlines()


def test_a_port_taken(config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, lines = serve(config, MAILGATE_SMTP_PORT=port, MAILGATE_HTTP_PORT="0")
    assert code == 2 and len(lines) == 1, lines
    assert f"cannot listen on 127.0.0.1:{port} (smtp)" in lines[0]
    assert "set smtp.port" in lines[0]


def test_a_data_directory_that_cannot_be(config: Path) -> None:
    code, lines = serve(config, MAILGATE_SERVER_DATA_DIR=str(config / "data"))  # under a file
    assert code == 2 and len(lines) == 1, lines
    assert "is not usable" in lines[0] and "server.data_dir" in lines[0]


def test_a_database_that_cannot_be_reached(config: Path) -> None:
    url = "postgresql://mailgate@127.0.0.1:1/none"
    code, lines = serve(config, MAILGATE_STORE_URL=url)
    assert code == 2 and len(lines) == 1, lines
    assert "cannot connect to postgresql://mailgate@127.0.0.1:1/none" in lines[0]


def test_a_database_newer_than_the_code(config: Path) -> None:
    assert mailgate("migrate", "-c", str(config), cwd=config.parent).returncode == 0
    conn = sqlite3.connect(config.parent / "data" / "mailgate.db")
    with conn:
        conn.execute("INSERT INTO schema_migrations VALUES (9999, 0)")
    conn.close()
    code, lines = serve(config)
    assert code == 2 and len(lines) == 1, lines
    assert "schema version 9999, newer than this mailgate" in lines[0]


def test_a_certificate_that_cannot_be_read(config: Path, tmp_path: Path) -> None:
    code, lines = serve(config, MAILGATE_SMTP_TLS_CERT=str(tmp_path / "missing.pem"))
    assert code == 2 and len(lines) == 1, lines
    assert "smtp.tls_cert" in lines[0] and "No such file" in lines[0]
