"""The mailgate command: init, keys, queue, and one-line failures with exit codes."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

MAILGATE = [sys.executable, "-m", "mailgate.cli"]


def mailgate(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    full_env.update(env or {})
    return subprocess.run(
        [*MAILGATE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def test_init_keys_and_queue(tmp_path: Path) -> None:
    done = mailgate("init", "--dir", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    secret = done.stdout.strip().splitlines()[-1]
    assert secret.startswith("mg_")
    cfg = str(tmp_path / "mailgate.toml")
    created = mailgate(
        "keys",
        "create",
        "--name",
        "printer",
        "--scope",
        "send",
        "--sender-domain",
        "example.org",
        "-c",
        cfg,
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    listed = mailgate("keys", "list", "-c", cfg, cwd=tmp_path)
    assert "printer" in listed.stdout and "example.org" in listed.stdout
    assert secret not in listed.stdout and created.stdout.strip() not in listed.stdout
    db = tmp_path / "data" / "mailgate.db"
    conn = sqlite3.connect(db)
    hashes = [r[0] for r in conn.execute("SELECT secret_hash FROM api_keys")]
    conn.close()
    assert secret not in " ".join(hashes)
    key_id = secret.split("_")[1]
    revoked = mailgate("keys", "revoke", key_id, "-c", cfg, cwd=tmp_path)
    assert revoked.returncode == 0 and key_id in revoked.stdout
    shown = mailgate("queue", "list", "-c", cfg, cwd=tmp_path)
    assert shown.returncode == 0 and "queued: 0" in shown.stdout
    missing = mailgate("queue", "show", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "-c", cfg, cwd=tmp_path)
    assert missing.returncode == 1 and "no message" in missing.stderr


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[smtp]\nport = 'x'\n")
    done = mailgate("check-config", "-c", str(tmp_path / "bad.toml"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("config: smtp.port:")


def test_unreachable_database_exits_1_with_one_line(tmp_path: Path) -> None:
    done = mailgate(
        "migrate",
        cwd=tmp_path,
        env={"MAILGATE_STORE_URL": "postgresql://nobody:pw@127.0.0.1:1/none"},
    )
    assert done.returncode == 1
    line = done.stderr.strip()
    assert line.startswith("store: cannot connect to postgresql://nobody:***@127.0.0.1:1/none")
    assert "\n" not in line and "pw" not in line


def test_second_server_on_one_database_exits_1_but_commands_still_work(tmp_path: Path) -> None:
    env = {
        "MAILGATE_SERVER_DATA_DIR": str(tmp_path),
        "MAILGATE_SMTP_PORT": "0",
        "MAILGATE_HTTP_PORT": "0",
        "MAILGATE_DELIVERY_ENABLED": "false",
    }
    assert mailgate("migrate", cwd=tmp_path, env=env).returncode == 0
    fd = os.open(tmp_path / "mailgate.db.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running server holds
    try:
        second = mailgate("serve", cwd=tmp_path, env=env)
        listed = mailgate("queue", "list", cwd=tmp_path, env=env)
    finally:
        os.close(fd)
    assert second.returncode == 2  # a start-up failure (issue 17): one line, exit 2
    assert "in use by another mailgate server" in second.stderr
    assert second.stderr.strip().count("\n") == 0
    assert listed.returncode == 0 and "queued: 0" in listed.stdout


def test_sqlite_locked_by_another_program_exits_1(tmp_path: Path) -> None:
    db = tmp_path / "mailgate.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE other (x)")
    conn.execute("BEGIN EXCLUSIVE")
    try:
        done = mailgate("migrate", cwd=tmp_path, env={"MAILGATE_SERVER_DATA_DIR": str(tmp_path)})
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    assert done.returncode == 1
    assert "is locked by another program" in done.stderr
    assert done.stderr.strip().count("\n") == 0
    check = sqlite3.connect(db)
    tables = {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    check.close()
    assert tables == {"other"}  # nothing written half-way


def test_unsafe_setting_must_be_explicit(tmp_path: Path) -> None:
    from mailgate.config import load_config

    assert load_config(environ={}).store.unsafe_no_fsync is False


def test_serve_answers_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import signal
    import smtplib
    import socket
    import time

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    smtp_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env.update(
        {
            "MAILGATE_SERVER_DATA_DIR": str(tmp_path),
            "MAILGATE_SMTP_PORT": str(smtp_port),
            "MAILGATE_HTTP_PORT": str(http_port),
            "MAILGATE_DELIVERY_ENABLED": "false",
        }
    )
    proc = subprocess.Popen(
        [*MAILGATE, "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as smtp:
                    refused = smtp.sendmail(
                        "a@example.org", ["b@example.com"], b"Subject: x\r\n\r\nkept\r\n"
                    )
                    assert refused == {}
                break
            except OSError:
                assert time.monotonic() < deadline, proc.stderr
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    conn = sqlite3.connect(tmp_path / "mailgate.db")
    assert conn.execute("SELECT count(*) FROM recipients WHERE status = 'queued'").fetchone() == (
        1,
    )
    conn.close()
