"""Backup and restore of the SQLite store: the database file plus the body segments its
rows point into (store/sqlite/bodies.py). On PostgreSQL bodies are in the database and
pg_dump is the tool (docs/operations.md).

Why the order of a backup cannot produce a row whose body is missing:

1. A shared flock on `<db>.bodies/.compact.lock` is taken first and held to the end:
   compaction deletes or rewrites segments only under an exclusive one.
2. The database is copied from one read transaction (SQLite's online backup API, in
   steps inside that transaction): one snapshot of committed rows. A row commits only
   after its body is on disk in its segment (the writer appends and fdatasyncs before
   COMMIT), so every body the snapshot references is already in its segment.
3. Then each referenced segment is copied up to the largest offset + size the copied
   database references in it. Segments are append-only, so a segment read after the
   snapshot holds at least those bytes; fewer is an error, never a short backup.

Everything is written under a temporary name beside DEST and renamed into place last,
with `backup.json` (what was copied, sizes, SHA-256) written before the rename: a
directory without it is not a finished backup.

Pure planning (names, needs against sizes, the manifest) is separate from the copying
at the edges. Progress is reported as (step, done bytes, total bytes) to a callback.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mailgate.errors import MailgateError

MANIFEST = "backup.json"
DATABASE = "mailgate.db"  # the database's name inside a backup, whatever it is called live
BODIES = DATABASE + ".bodies"
KEY_FILE = "secret.key"  # secretbox.KEY_FILE: seals the DKIM keys and webhook secrets
COMPACT_LOCK = ".compact.lock"  # in the bodies directory; compaction holds it exclusively
FORMAT = 1
# Database pages per backup step (4 MB of 4 KB pages): a progress report per step. The
# steps run inside one read transaction, which in WAL mode never blocks a writer, so
# there is no sleep between them (a sleep would only keep the WAL pinned longer). Without
# that transaction SQLite restarts a stepped backup whenever another connection commits:
# under steady ingest it would never finish.
STEP_PAGES = 1024
CHUNK = 1 << 20  # bytes per read when copying and hashing files
BUSY_TIMEOUT = 5.0  # seconds: starting a read transaction may briefly meet a busy WAL

Report = Callable[[str, int, int], None]  # (step, bytes done, bytes in all)


class BackupError(MailgateError):
    """A backup or restore that cannot be done, or a backup found damaged; one line."""


# -- what is planned (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """A body segment as a database references it."""

    name: str
    need: int  # bytes the database references: its largest body_offset + size
    bodies: int  # messages with their body in it


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A file of a backup as backup.json lists it."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """backup.json: what a finished backup holds."""

    taken_at: float
    messages: int
    database: FileEntry
    segments: tuple[FileEntry, ...]
    key_file: FileEntry | None  # the data directory's secret.key, when one sealed secrets


@dataclass(frozen=True, slots=True)
class Taken:
    """What `take_backup` wrote."""

    dest: Path
    manifest: Manifest
    bytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Restored:
    """What `restore_backup` brought back."""

    db: Path
    manifest: Manifest
    bodies: int  # messages whose body is in a segment
    bytes: int
    aside: Path | None  # where --force moved what was there before


def sqlite_path(store_url: str) -> Path | None:
    """The database file of a SQLite store URL (as open_store reads it); None for
    PostgreSQL."""
    if store_url.startswith("sqlite:///"):
        return Path(store_url[len("sqlite:///") :])
    return None


def segment_name_ok(name: str) -> bool:
    """A segment name a row may carry: a plain file name in the bodies directory (a
    backup is input too: a name with a slash must not reach outside it)."""
    return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")


def segment_problems(needs: Sequence[Segment], sizes: Mapping[str, int | None]) -> list[str]:
    """What is wrong with the segments a database references, given each one's size on
    disk (None: missing). Empty: every referenced body is there, whole."""
    problems = []
    for seg in needs:
        size = sizes.get(seg.name)
        if not segment_name_ok(seg.name):
            problems.append(f"a message names a bad body segment {seg.name!r}")
        elif size is None:
            problems.append(f"body segment {seg.name} ({seg.bodies} messages) is missing")
        elif size < seg.need:
            problems.append(
                f"body segment {seg.name} is {size} bytes, but its {seg.bodies} messages"
                f" need {seg.need} (truncated)"
            )
    return problems


def aside_path(db: Path, now: float) -> Path:
    """Where `restore --force` moves the database that was there."""
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return db.with_name(f"{db.name}.before-restore-{stamp}")


def manifest_json(m: Manifest) -> str:
    return json.dumps({"format": FORMAT, **asdict(m)}, indent=2) + "\n"


def manifest_from_json(text: str) -> Manifest:
    """Raises ValueError (or KeyError / TypeError) on anything that is not one."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"unknown backup format {data.get('format') if data else None!r}")

    def entry(d: Any) -> FileEntry:
        e = FileEntry(str(d["name"]), int(d["size"]), str(d["sha256"]))
        if not segment_name_ok(e.name) or e.size < 0:
            raise ValueError(f"bad file entry {d!r}")
        return e

    key = data["key_file"]
    return Manifest(
        taken_at=float(data["taken_at"]),
        messages=int(data["messages"]),
        database=entry(data["database"]),
        segments=tuple(entry(s) for s in data["segments"]),
        key_file=None if key is None else entry(key),
    )


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# -- backup -------------------------------------------------------------------------------


def dest_problem(dest: Path) -> str | None:
    """Why DEST cannot take a backup (it exists and is not an empty directory), or None."""
    if not dest.exists():
        return None
    if not dest.is_dir():
        return f"backup: {dest} exists and is not a directory"
    if any(dest.iterdir()):
        return f"backup: {dest} exists and is not empty; give a new or empty directory"
    return None


def take_backup(db: Path, dest: Path, key_file: Path | None, report: Report) -> Taken:
    """Copy the database at `db` (a server may be running on it) and the body segments
    it references into the new directory `dest`; see the module docstring for the order.
    key_file: the data directory's secret.key, copied when it exists."""
    with _one_line("backup"):  # disk full, a permission: one line naming the file
        started = time.monotonic()
        problem = dest_problem(dest)
        if problem:
            raise BackupError(problem)
        if not db.is_file():
            raise BackupError(f"backup: no database at {db}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
        if tmp.exists():  # a crashed earlier run of this very pid number
            shutil.rmtree(tmp)
        tmp.mkdir(mode=0o700)
        try:
            (tmp / BODIES).mkdir(mode=0o700)
            with _compaction_held_off(_bodies_dir(db), db):
                taken_at = time.time()
                sidecars = [db.with_name(db.name + end) for end in ("-wal", "-shm")]
                fresh = [p for p in sidecars if not p.exists()]
                try:
                    _copy_database(db, tmp / DATABASE, report)
                finally:  # opened as root with no server running, SQLite made these
                    for made in fresh:  # as root: the server must still write them
                        if made.exists():
                            _owned_like(made, db)
                messages, needs = read_needs(tmp / DATABASE)
                segments = _copy_segments(_bodies_dir(db), tmp / BODIES, needs, report)
            key = None
            if key_file is not None and key_file.is_file():
                key = _copy_file(key_file, tmp / KEY_FILE, None, None)
            database = FileEntry(DATABASE, *_size_and_hash(tmp / DATABASE, None))
            manifest = Manifest(taken_at, messages, database, tuple(segments), key)
            _write_synced(tmp / MANIFEST, manifest_json(manifest).encode())
            _sync_dir(tmp / BODIES)
            _sync_dir(tmp)
            tmp.rename(dest)  # an empty DEST directory is replaced; a non-empty one refuses
            _sync_dir(dest.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        written = database.size + sum(s.size for s in segments) + (key.size if key else 0)
        return Taken(dest, manifest, written, time.monotonic() - started)


@contextlib.contextmanager
def _compaction_held_off(bodies: Path, db: Path) -> Iterator[None]:
    """A shared flock on the compaction lock: no segment is deleted or rewritten while
    it is held (compaction takes it exclusively). Waits while a compaction runs."""
    try:
        bodies.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(bodies / COMPACT_LOCK, os.O_RDONLY | os.O_CREAT, 0o600)
        for made in (bodies, bodies / COMPACT_LOCK):
            _owned_like(made, db)
    except OSError as exc:
        raise BackupError(f"backup: cannot open {bodies / COMPACT_LOCK}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the flock


def _copy_database(db: Path, target: Path, report: Report) -> None:
    """One snapshot of the live database into `target` (a plain rollback-journal file
    afterwards, so the backup is one self-contained file)."""
    try:
        src = sqlite3.connect(
            db.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None, timeout=BUSY_TIMEOUT
        )
    except sqlite3.Error as exc:
        raise BackupError(f"backup: cannot open {db}: {exc}") from None
    try:
        src.execute("BEGIN")
        # the first read starts the read transaction: the snapshot every step copies
        page_size = int(src.execute("PRAGMA page_size").fetchone()[0])
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        dst = sqlite3.connect(target, isolation_level=None)
        try:

            def step(status: int, remaining: int, total: int) -> None:
                report("database", (total - remaining) * page_size, total * page_size)

            src.backup(dst, pages=STEP_PAGES, progress=step)
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
        src.execute("COMMIT")
    except sqlite3.Error as exc:
        raise BackupError(f"backup: copying {db} failed: {exc}") from None
    finally:
        src.close()
    os.chmod(target, 0o600)
    _fsync_path(target)


def read_needs(db: Path) -> tuple[int, list[Segment]]:
    """The messages in a (copied) database, and each body segment it references with the
    bytes it needs there."""
    try:
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"{db}: cannot open: {exc}") from None
    try:
        messages = int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
        rows = conn.execute(
            "SELECT body_file, max(body_offset + size), count(*), min(body_offset)"
            " FROM messages WHERE body_file IS NOT NULL GROUP BY body_file ORDER BY body_file"
        ).fetchall()
    except sqlite3.Error as exc:
        raise BackupError(f"{db} is not a mailgate database: {exc}") from None
    finally:
        conn.close()
    needs = []
    for name, need, count, lowest in rows:
        if need is None or lowest is None or lowest < 0:
            raise BackupError(f"{db}: messages in {name} have no or a negative body offset")
        needs.append(Segment(str(name), int(need), int(count)))
    return messages, needs


def _copy_segments(
    source: Path, target: Path, needs: Sequence[Segment], report: Report
) -> list[FileEntry]:
    bad = [s.name for s in needs if not segment_name_ok(s.name)]
    if bad:
        raise BackupError(f"backup: a message names a bad body segment {bad[0]!r}")
    total, done = sum(s.need for s in needs), 0
    copied = []
    for seg in needs:

        def step(n: int, base: int = done) -> None:
            report("bodies", base + n, total)

        copied.append(_copy_file(source / seg.name, target / seg.name, seg, step))
        done += seg.need
    report("bodies", total, total)
    return copied


def _copy_file(
    src: Path,
    dst: Path,
    seg: Segment | None,
    step: Callable[[int], None] | None,
) -> FileEntry:
    """Copy src (only its first seg.need bytes for a segment) to the new file dst,
    synced; its size and SHA-256. A segment shorter than its need is an error."""
    limit = seg.need if seg is not None else None
    digest, copied = hashlib.sha256(), 0
    try:
        fin = src.open("rb")
    except FileNotFoundError:
        what = f"body segment {src.name} ({seg.bodies} messages)" if seg else str(src)
        raise BackupError(f"backup: {what} is missing from {src.parent}") from None
    with fin, os.fdopen(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fout:
        while limit is None or copied < limit:
            want = CHUNK if limit is None else min(CHUNK, limit - copied)
            chunk = fin.read(want)
            if not chunk:
                break
            digest.update(chunk)
            fout.write(chunk)
            copied += len(chunk)
            if step is not None:
                step(copied)
        fout.flush()
        os.fsync(fout.fileno())
    if limit is not None and copied < limit:
        assert seg is not None
        raise BackupError(
            f"backup: body segment {seg.name} holds {copied} bytes, but the database"
            f" references {limit} ({seg.bodies} messages): refusing a backup with bodies missing"
        )
    return FileEntry(dst.name, copied, digest.hexdigest())


# -- restore ------------------------------------------------------------------------------


def restore_backup(
    src: Path, db: Path, key_file: Path | None, *, force: bool, report: Report
) -> Restored:
    """Verify the backup in `src`, then put it in place as `db` (and its bodies
    directory, and key_file when the backup has one). Refuses while a server holds `db`,
    or when `db` already has a database there, unless `force` moves that aside."""
    with _one_line("restore"), _server_lock(db):  # no server starts on a half-restored store
        manifest = _read_manifest(src)
        there = _existing(db, key_file, src, manifest)
        if there and not force:
            names = ", ".join(p.name for p in there)
            raise BackupError(
                f"restore: {db.parent} already has a database ({names}); --force moves it aside"
            )
        bodies = verify_backup(src, manifest, report)
        written = _put_in_place(src, db, key_file, manifest, there, report)
        return Restored(db, manifest, bodies, written[0], written[1])


@contextlib.contextmanager
def _server_lock(db: Path) -> Iterator[None]:
    """The lock a running server holds on its database (sqlite/engine.py)."""
    lock = db.with_name(db.name + ".lock")
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _owned_like(lock, db.parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(
                f"restore: a mailgate server is running on {db} ({lock} is locked); stop it first"
            ) from None
        yield
    finally:
        os.close(fd)


def _read_manifest(src: Path) -> Manifest:
    try:
        return manifest_from_json((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(
            f"restore: {src} is not a finished mailgate backup (no {MANIFEST})"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"restore: {src / MANIFEST} cannot be read: {exc}") from None


def verify_backup(src: Path, manifest: Manifest, report: Report) -> int:
    """Check a backup before anything is restored from it: the database's SHA-256 and
    `PRAGMA integrity_check`, every body segment it references present, long enough for
    every body in it and with the SHA-256 the backup wrote. The number of messages with
    their body in a segment; BackupError naming the first problem."""
    files = [(src / DATABASE, manifest.database)]
    files += [(src / BODIES / s.name, s) for s in manifest.segments]
    if manifest.key_file is not None:
        files.append((src / KEY_FILE, manifest.key_file))
    sizes: dict[Path, int] = {}
    for path, _ in files:
        with contextlib.suppress(FileNotFoundError):
            sizes[path] = path.stat().st_size
    if src / DATABASE not in sizes:
        raise BackupError(f"restore: {src / DATABASE} is missing")
    _check_integrity(src / DATABASE)
    messages, needs = read_needs(src / DATABASE)
    if messages != manifest.messages:
        raise BackupError(
            f"restore: {src / DATABASE} has {messages} messages,"
            f" {MANIFEST} says {manifest.messages}"
        )
    listed = {s.name for s in manifest.segments}
    unlisted = [s.name for s in needs if s.name not in listed]
    if unlisted:
        raise BackupError(f"restore: body segment {unlisted[0]} is not in {src / MANIFEST}")
    seg_sizes = {s.name: sizes.get(src / BODIES / s.name) for s in manifest.segments}
    problems = segment_problems(needs, seg_sizes)
    if problems:
        raise BackupError(f"restore: {src}: {problems[0]}")
    total, done = sum(sizes.values()), 0
    for path, entry in files:
        if path not in sizes:
            raise BackupError(f"restore: {path} is missing")

        def step(n: int, base: int = done) -> None:
            report("verifying", base + n, total)

        size, sha = _size_and_hash(path, step)
        if size != entry.size or sha != entry.sha256:
            raise BackupError(
                f"restore: {path} is damaged: {size} bytes, SHA-256 {sha[:12]}…, where"
                f" {MANIFEST} lists {entry.size} bytes, {entry.sha256[:12]}…"
            )
        done += size
    return sum(s.bodies for s in needs)


def _check_integrity(db: Path) -> None:
    try:
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            found = [r[0] for r in conn.execute("PRAGMA integrity_check(5)")]
            columns = {r[1] for r in conn.execute("PRAGMA table_info(messages)")}
            # a body retention purged keeps its size but no bytes (schema v8)
            kept = " AND body_purged_at IS NULL" if "body_purged_at" in columns else ""
            short = conn.execute(
                "SELECT count(*), min(id) FROM messages"
                " WHERE body_file IS NULL AND length(raw) != size" + kept
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(f"restore: {db} is not a readable mailgate database: {exc}") from None
    if found != ["ok"]:
        raise BackupError(f"restore: {db} fails integrity_check: {'; '.join(found)}")
    if short[0]:
        raise BackupError(
            f"restore: {db}: {short[0]} messages' bodies have the wrong length (first {short[1]})"
        )


def _existing(db: Path, key_file: Path | None, src: Path, manifest: Manifest) -> list[Path]:
    """What a restore would replace: the database and its WAL (a WAL left beside a new
    database would be replayed into it), its bodies, and a secret.key other than the
    backup's."""
    there = [p for p in (db, _wal(db, "-wal"), _wal(db, "-shm")) if p.exists()]
    bodies = _bodies_dir(db)
    if bodies.is_dir() and any(p.name != COMPACT_LOCK for p in bodies.iterdir()):
        there.append(bodies)
    if manifest.key_file is not None and key_file is not None and key_file.exists():
        with contextlib.suppress(OSError):
            if key_file.read_bytes() != (src / KEY_FILE).read_bytes():
                there.append(key_file)
    return there


def _put_in_place(
    src: Path,
    db: Path,
    key_file: Path | None,
    manifest: Manifest,
    there: list[Path],
    report: Report,
) -> tuple[int, Path | None]:
    """Copy under temporary names, move what was there aside, rename into place (the
    database last: its presence says the restore finished)."""
    pid = os.getpid()
    tmp_db = db.with_name(f".{db.name}.restoring-{pid}")
    tmp_bodies = db.with_name(f".{db.name}.bodies.restoring-{pid}")
    tmp_key = key_file.with_name(f".{key_file.name}.restoring-{pid}") if key_file else None
    total = manifest.database.size + sum(s.size for s in manifest.segments)
    done = 0

    def step(n: int) -> None:
        report("restoring", done + n, total)

    moved: list[tuple[Path, Path]] = []  # (where it was, where it went): put back on failure
    try:
        for stale in (tmp_db, tmp_bodies):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        tmp_bodies.mkdir(mode=0o700)
        for seg in manifest.segments:
            _copy_file(src / BODIES / seg.name, tmp_bodies / seg.name, None, step)
            done += seg.size
        _copy_file(src / DATABASE, tmp_db, None, step)
        done += manifest.database.size
        if manifest.key_file is not None and tmp_key is not None:
            if tmp_key.exists():
                tmp_key.unlink()
            _copy_file(src / KEY_FILE, tmp_key, None, None)
        for made in (tmp_bodies, *tmp_bodies.iterdir(), tmp_db, tmp_key):
            if made is not None and made.exists():
                _owned_like(made, db.parent)
        _sync_dir(tmp_bodies)
        aside = None
        if there:
            aside = aside_path(db, time.time())
            aside.mkdir(mode=0o700)
            for path in there:
                path.rename(aside / path.name)
                moved.append((path, aside / path.name))
        if tmp_key is not None and key_file is not None and tmp_key.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            tmp_key.rename(key_file)
            _sync_dir(key_file.parent)
        bodies = _bodies_dir(db)
        if bodies.exists():  # only the compaction lock was in it
            shutil.rmtree(bodies)
        tmp_bodies.rename(bodies)
        tmp_db.rename(db)
        _sync_dir(db.parent)
    except BaseException:
        shutil.rmtree(tmp_bodies, ignore_errors=True)
        for tmp in (tmp_db, tmp_key):
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        for was, went in reversed(moved):  # the store that was there is there again
            with contextlib.suppress(OSError):
                if not was.exists():
                    went.rename(was)
        raise
    report("restoring", total, total)
    return total, aside


# -- the file edges -------------------------------------------------------------------------


@contextlib.contextmanager
def _one_line(command: str) -> Iterator[None]:
    """An OSError as a BackupError: one line naming the file and the cause."""
    try:
        yield
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise BackupError(f"{command}: {where}{exc.strerror or exc}") from None


def _bodies_dir(db: Path) -> Path:
    return db.with_name(db.name + ".bodies")  # as SqliteEngine names it


def _wal(db: Path, suffix: str) -> Path:
    return db.with_name(db.name + suffix)


def _owned_like(path: Path, like: Path) -> None:
    """Run as root, a file made for the server (a restored store, the compaction lock)
    goes to the user owning `like`, so the server can open it."""
    if os.geteuid() != 0:
        return
    want, have = like.stat(), path.stat()
    if (have.st_uid, have.st_gid) != (want.st_uid, want.st_gid):
        os.chown(path, want.st_uid, want.st_gid)


def _size_and_hash(path: Path, step: Callable[[int], None] | None) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if step is not None:
                step(size)
    return size, digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(path: Path) -> None:
    _fsync_path(path)
