"""Backup and restore (issue 17, src/mailgate/backup.py): `mailgate backup` taken from a
real server while it takes mail over HTTP holds every message acknowledged before the
backup started, byte for byte, once restored and served again; a damaged backup, a
non-empty destination, a running server and an existing database are refused in one line."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mailgate import keys
from mailgate.backup import (
    FileEntry,
    Manifest,
    Segment,
    aside_path,
    manifest_from_json,
    manifest_json,
    segment_problems,
    sqlite_path,
)
from mailgate.models import Scope
from mailgate.store import open_store
from tests.reliability.harness import ROOT, free_port, wait_ready
from tests.test_cli import mailgate

BIG = 100 * 1024  # a body this large goes to a body segment (bodies.BODY_FILE_GROUP_MIN)
BEFORE_BACKUP = 30  # messages each loader has acknowledged before the backup starts


# -- the pure parts -----------------------------------------------------------------------


def test_segment_problems_name_each_missing_or_short_segment() -> None:
    needs = [Segment("a.seg", 100, 2), Segment("b.seg", 50, 1), Segment("c.seg", 10, 1)]
    problems = segment_problems(needs, {"a.seg": 100, "b.seg": 49})
    assert problems == [
        "body segment b.seg is 49 bytes, but its 1 messages need 50 (truncated)",
        "body segment c.seg (1 messages) is missing",
    ]
    assert segment_problems([Segment("a.seg", 100, 2)], {"a.seg": 4096}) == []


def test_a_segment_name_cannot_leave_the_bodies_directory() -> None:
    for name in ("../mailgate.db", "/etc/passwd", ".compact.lock", ""):
        assert segment_problems([Segment(name, 1, 1)], {name: 10}) == [
            f"a message names a bad body segment {name!r}"
        ]


def test_the_manifest_reads_back_as_written() -> None:
    m = Manifest(
        1.5,
        3,
        FileEntry("mailgate.db", 4096, "ab" * 32),
        (FileEntry("01J.seg", 10, "cd" * 32),),
        None,
    )
    assert manifest_from_json(manifest_json(m)) == m
    with pytest.raises(ValueError):
        manifest_from_json(manifest_json(m).replace('"01J.seg"', '"../x"'))


def test_store_urls_and_the_aside_name() -> None:
    assert sqlite_path("sqlite:////srv/m.db") == Path("/srv/m.db")
    assert sqlite_path("postgresql://u@h/db") is None
    assert (
        aside_path(Path("/d/mailgate.db"), 0).name == "mailgate.db.before-restore-19700101T000000Z"
    )


# -- the command, without a server ----------------------------------------------------------


def test_backup_refuses_a_destination_that_is_not_empty(tmp_path: Path) -> None:
    env = {"MAILGATE_SERVER_DATA_DIR": str(tmp_path / "data")}
    assert mailgate("migrate", cwd=tmp_path, env=env).returncode == 0
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    done = mailgate("backup", str(dest), cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"backup: {dest} exists and is not empty; give a new or empty directory"
    ]
    assert [p.name for p in dest.iterdir()] == ["keep"]
    assert not list(tmp_path.glob(".dest.partial-*"))


def test_an_empty_destination_takes_a_backup(tmp_path: Path) -> None:
    env = {"MAILGATE_SERVER_DATA_DIR": str(tmp_path / "data")}
    assert mailgate("migrate", cwd=tmp_path, env=env).returncode == 0
    (tmp_path / "dest").mkdir()
    done = mailgate("backup", str(tmp_path / "dest"), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("backed up 0 messages (0 body segments)")
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [
        "backup.json",
        "mailgate.db",
        "mailgate.db.bodies",
    ]


def test_a_segment_shorter_than_its_rows_need_fails_the_backup(tmp_path: Path) -> None:
    env = {"MAILGATE_SERVER_DATA_DIR": str(tmp_path / "data")}
    assert mailgate("migrate", cwd=tmp_path, env=env).returncode == 0
    bodies = tmp_path / "data" / "mailgate.db.bodies"
    bodies.mkdir()
    (bodies / "01CUT.seg").write_bytes(b"x" * 1000)  # a row below needs 1,500
    db = sqlite3.connect(tmp_path / "data" / "mailgate.db")
    with db:
        db.execute(
            "INSERT INTO messages (id, created_at, sender, source, size, raw, body_file,"
            " body_offset) VALUES ('01M', 0, '', 'http', 1000, x'', '01CUT.seg', 500)"
        )
    db.close()
    done = mailgate("backup", str(tmp_path / "dest"), cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "backup: body segment 01CUT.seg holds 1000 bytes, but the database references 1500"
        " (1 messages): refusing a backup with bodies missing"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no DEST, no partial copy


def test_restore_refuses_what_is_not_a_finished_backup(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    env = {"MAILGATE_SERVER_DATA_DIR": str(tmp_path / "data")}
    done = mailgate("restore", str(tmp_path / "half"), cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"restore: {tmp_path / 'half'} is not a finished mailgate backup (no backup.json)"
    ]


def test_on_postgresql_both_commands_point_to_pg_dump(tmp_path: Path) -> None:
    env = {"MAILGATE_STORE_URL": "postgresql://mailgate@127.0.0.1:1/none"}
    backup = mailgate("backup", str(tmp_path / "b"), cwd=tmp_path, env=env)
    restore = mailgate("restore", str(tmp_path / "b"), cwd=tmp_path, env=env)
    for done, tool in ((backup, "pg_dump"), (restore, "pg_restore")):
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"use {tool}" in lines[0], lines
    assert not (tmp_path / "b").exists()


# -- under load, through a real server ------------------------------------------------------


class Serve:
    """`mailgate serve` as a process (two ingress processes, each writing its own body
    segments), with delivery off: the messages stay where the backup finds them."""

    def __init__(self, tmp: Path) -> None:
        tmp.mkdir(parents=True)
        self.tmp, self.data, self.http_port = tmp, tmp / "data", free_port()
        self.config = tmp / "mailgate.toml"
        self.config.write_text(
            f'[server]\ndata_dir = "{self.data}"\n'
            f"[smtp]\nport = {free_port()}\n"
            f"[http]\nport = {self.http_port}\nrate_limit_per_second = 0\n"
            "[delivery]\nenabled = false\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def make_key(self) -> str:
        async def create() -> str:
            store = open_store(f"sqlite:///{self.data / 'mailgate.db'}")
            await store.open()
            try:
                return (await keys.create_key(store, "load", [Scope.SEND, Scope.READ]))[1]
            finally:
                await store.close()

        return asyncio.run(create())

    def start(self) -> None:
        with (self.tmp / "serve.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailgate", "serve", "-c", str(self.config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_ready(self.http_port, timeout=60)
        except TimeoutError:
            self.stop()
            raise RuntimeError((self.tmp / "serve.log").read_text()[-2000:]) from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return mailgate(*args, "-c", str(self.config), cwd=self.tmp, timeout=180)


class Loader(threading.Thread):
    """Sends over HTTP until stopped, every other message large; records each id
    acknowledged with 202, in order."""

    def __init__(self, url: str, key: str, name: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.tag = url, key, name
        self.acked: list[str] = []
        self.refused: list[str] = []
        self.stopping = threading.Event()
        self.progress = threading.Condition()

    def run(self) -> None:
        auth = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=auth, timeout=30) as client:
            n = 0
            while not self.stopping.is_set():
                n += 1
                text = f"{self.tag} {n}\n" + ("y" * 75 + "\n") * (BIG // 76 if n % 2 else 2)
                body = {"from": "load@example.org", "to": "rcpt@example.com", "text": text}
                try:
                    r = client.post("/v1/messages", json=body)
                except httpx.HTTPError as exc:
                    self.refused.append(repr(exc))
                    continue
                if r.status_code != 202:
                    self.refused.append(f"{r.status_code} {r.text[:200]}")
                    continue
                with self.progress:
                    self.acked.append(r.json()["id"])
                    self.progress.notify_all()

    def wait_for(self, count: int, timeout: float = 60) -> None:
        with self.progress:
            ok = self.progress.wait_for(lambda: len(self.acked) >= count, timeout)
        assert ok, f"{self.tag}: {len(self.acked)} acknowledged, refused: {self.refused[:3]}"

    def stop(self) -> None:
        self.stopping.set()
        self.join(60)


def raw_of(url: str, key: str, ids: list[str]) -> dict[str, bytes]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        out = {}
        for message_id in ids:
            r = client.get(f"/v1/messages/{message_id}/raw", timeout=30)
            assert r.status_code == 200, (message_id, r.status_code, r.text[:200])
            out[message_id] = r.content
        return out


@dataclass
class BackedUp:
    backup: Path
    key: str
    before: dict[str, bytes]  # every message acknowledged before the backup: its raw bytes
    stdout: str


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackedUp]:
    """A server taking mail from two loaders; `mailgate backup` taken while they send."""
    tmp = tmp_path_factory.mktemp("backup")
    server = Serve(tmp / "live")
    key = server.make_key()
    server.start()
    loaders = [Loader(server.url, key, f"loader{i}") for i in range(2)]
    try:
        for loader in loaders:
            loader.start()
        for loader in loaders:
            loader.wait_for(BEFORE_BACKUP)
        before = [i for loader in loaders for i in list(loader.acked)]
        done = server.cli("backup", str(tmp / "backup"))
        assert done.returncode == 0, done.stderr
        after = [len(loader.acked) for loader in loaders]
        for loader, count in zip(loaders, after, strict=True):
            loader.wait_for(count + 2)  # the server still takes mail after the backup
        for loader in loaders:
            loader.stop()
        assert not [r for loader in loaders for r in loader.refused]
        originals = raw_of(server.url, key, before)
    finally:
        for loader in loaders:
            loader.stop()
        server.stop()
    yield BackedUp(tmp / "backup", key, originals, done.stdout)


@pytest.mark.slow
def test_a_backup_under_load_restores_every_message_acknowledged_before_it(
    backed_up: BackedUp, tmp_path: Path
) -> None:
    assert backed_up.stdout.startswith("backed up ")
    segments = list((backed_up.backup / "mailgate.db.bodies").glob("*.seg"))
    assert segments, "no body went to a segment: the test would not test them"
    assert sum(len(raw) >= BIG for raw in backed_up.before.values()) >= BEFORE_BACKUP

    server = Serve(tmp_path / "restored")
    done = server.cli("restore", str(backed_up.backup))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("restored ") and str(server.data / "mailgate.db") in done.stdout
    db = sqlite3.connect(server.data / "mailgate.db")
    in_files = db.execute("SELECT count(*) FROM messages WHERE body_file IS NOT NULL").fetchone()
    db.close()
    assert in_files[0] >= BEFORE_BACKUP
    # the key that seals stored secrets (made by the first serve) comes back with them
    key = (server.data / "secret.key").read_bytes()
    assert key and key == (backed_up.backup / "secret.key").read_bytes()
    server.start()
    try:
        restored = raw_of(server.url, backed_up.key, list(backed_up.before))
        running = server.cli("restore", "--force", str(backed_up.backup))
    finally:
        server.stop()
    missing = [i for i, raw in backed_up.before.items() if restored[i] != raw]
    assert not missing, f"{len(missing)} of {len(restored)} differ after restore: {missing[:5]}"
    # no restore under a running server, --force or not
    assert running.returncode == 1
    assert running.stderr.strip().splitlines() == [
        f"restore: a mailgate server is running on {server.data / 'mailgate.db'}"
        f" ({server.data / 'mailgate.db.lock'} is locked); stop it first"
    ]


@pytest.mark.slow
def test_restore_over_a_database_needs_force_and_moves_it_aside(
    backed_up: BackedUp, tmp_path: Path
) -> None:
    server = Serve(tmp_path / "target")
    assert server.cli("restore", str(backed_up.backup)).returncode == 0
    again = server.cli("restore", str(backed_up.backup))
    assert again.returncode == 1
    [line] = again.stderr.strip().splitlines()
    assert line.startswith(f"restore: {server.data} already has a database (mailgate.db")
    assert line.endswith("--force moves it aside")
    forced = server.cli("restore", "--force", str(backed_up.backup))
    assert forced.returncode == 0, forced.stderr
    [aside] = server.data.glob("mailgate.db.before-restore-*")
    assert (aside / "mailgate.db").is_file() and (aside / "mailgate.db.bodies").is_dir()
    assert f"moved the database that was there to {aside}" in forced.stderr


@pytest.mark.slow
def test_restore_refuses_a_backup_with_a_truncated_segment(
    backed_up: BackedUp, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(backed_up.backup, damaged)
    segment = max((damaged / "mailgate.db.bodies").glob("*.seg"), key=lambda p: p.stat().st_size)
    size = segment.stat().st_size
    with segment.open("r+b") as f:
        f.truncate(size // 2)
    server = Serve(tmp_path / "target")
    done = server.cli("restore", str(damaged))
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"restore: {damaged}: body segment {segment.name} is {size // 2} bytes")
    assert line.endswith("(truncated)")
    assert not (server.data / "mailgate.db").exists()
    assert not (server.data / "mailgate.db.bodies").exists()
