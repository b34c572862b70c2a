"""Compaction of SQLite's body segments (bodies.py): give back the space of bodies that
retention purged.

    find      the segments no process appends to (bodies.py: a visible segment nobody
              holds a shared flock on is never appended to again), and the live bodies
              each still holds (the messages_segment index)
    delete    a segment with no live body (renamed aside, then given back a few MB at a time)
    rewrite   segments below `live_ratio` live bytes, unwritten for SETTLE seconds: their
              live bodies copied into one new segment (written under a hidden name,
              fsynced, renamed, the directory fsynced), then the rows repointed (fenced
              by their old place), then the old segments deleted once no row names them

Never a row naming a missing body, whatever step a crash stops at: before the repoint
the rows name the old segments, which are still there (the new one is an orphan with no
live body: deleted by the next compaction); after it they name the new one, which was
on disk before the repoint committed (the old ones have no live body left: deleted
next time if not now). A reader that read a row's old place just before the repoint and
opens the segment just after its deletion reads the row again (queries.BODY_READS).

`mailgate backup` copies the database, then the segments, holding a shared flock on
`<db>.bodies/.compact.lock`; compaction holds it exclusively while it rewrites or
deletes segments, and skips a round (busy) rather than wait while a backup runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailgate.models import new_id
from mailgate.store.protocols import Compaction, Tx
from mailgate.store.sqlite.bodies import NEW, SEGMENT_MAX, SUFFIX, BodyFiles

LOCK_NAME = ".compact.lock"
ORPHAN_AGE = 3600.0  # seconds before a hidden, unlocked `.…new` file counts as a crash's
COPY_CHUNK = 1 << 20  # bytes gathered before each write of a rewrite
# Seconds a sparse segment must have gone unwritten (its mtime) before it is rewritten.
# Under a retention of minutes, the segments the body cutoff is passing through lose
# bodies every round and are soon dead: rewriting them each round copied bodies that
# went a minute later (bench/retention.py: compaction took 28% of the purge's time at
# 3,000 messages/s). A settled sparse segment holds mail that stays (not yet finished,
# or younger than body_days in a segment written long ago): worth copying once.
SETTLE = 600.0
DEAD = ".dead"  # a segment being given back: `.<name>.dead`, never read (see remove)
READER_GRACE = 1.0
GIVE_BACK_STEP = 4 << 20
GIVE_BACK_PAUSE = 0.02

# (message id, offset, size) of each live body of a segment, in file order
Live = list[tuple[str, int, int]]
Move = tuple[str, int, str, str, int]  # (new file, new offset, id, old file, old offset)


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    size: int  # bytes in the file
    written: float  # its mtime: when it was last appended to (or, a copy, made)
    live: Live

    @property
    def live_bytes(self) -> int:
        return sum(size for _, _, size in self.live)


@contextlib.contextmanager
def compaction_lock(directory: Path) -> Iterator[bool]:
    """The exclusive flock on `.compact.lock`, not waited for: True when held (a backup
    holds it shared while it copies; another process's compaction, exclusive)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # lets go of the lock


def unlocked(path: Path) -> bool:
    """No process holds a lock on the file (its appender has moved on or died)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def closed_segments(directory: Path) -> dict[str, tuple[int, float]]:
    """Segments no process appends to, by name, with their sizes and mtimes; and hidden
    files a crash left behind mid-birth or mid-removal, removed."""
    found: dict[str, tuple[int, float]] = {}
    if not directory.is_dir():
        return found
    for entry in os.scandir(directory):
        path = Path(entry.path)
        if entry.name.endswith(DEAD) and entry.name.startswith("."):  # a crash's, mid-remove
            path.unlink(missing_ok=True)
        elif entry.name.endswith(NEW) and entry.name.startswith("."):
            old = time.time() - entry.stat().st_mtime > ORPHAN_AGE
            if old and unlocked(path):
                path.unlink(missing_ok=True)
        elif entry.name.endswith(SUFFIX) and not entry.name.startswith(".") and unlocked(path):
            stat = entry.stat()
            found[entry.name] = (stat.st_size, stat.st_mtime)
    return found


def rewrite(files: BodyFiles, segments: Sequence[Segment]) -> tuple[str, list[Move]]:
    """The segments' live bodies copied, in order, into one new segment, on disk (data
    and name) before this returns; its name and each body's move."""
    directory = files.directory
    name = f"{new_id()}{SUFFIX}"
    hidden = directory / f".{name}{NEW}"
    moves: list[Move] = []
    fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        at, chunk = 0, bytearray()
        for segment in segments:
            for message_id, offset, size in segment.live:
                chunk += files.read(segment.name, offset, size)
                moves.append((name, at, message_id, segment.name, offset))
                at += size
                if len(chunk) >= COPY_CHUNK:
                    _write_all(fd, chunk)
                    chunk.clear()
        _write_all(fd, chunk)
        if files.fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        hidden.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.rename(hidden, directory / name)
    _sync_dir(files)
    return name, moves


def remove(files: BodyFiles, names: Sequence[str]) -> int:
    """Delete the segments (no row names them); the bytes given back. Each is renamed
    out of the readers' way first (a read after that finds it gone and reads its row
    again, as after a delete), then, after READER_GRACE (a read that opened it just
    before has long finished), cut GIVE_BACK_STEP bytes at a time, GIVE_BACK_PAUSE apart,
    and unlinked. Why: on this `discard`-mounted disk a 64 MB segment deleted at once
    stalled the doors' commits (their fsyncs) for up to seconds: beside the purge at
    3,000 messages/s, 175-370 of ~2,900 requests passed wrk's 2 s timeout with deletes,
    0-4 with none (bench/retention.py, docs/benchmarks.md)."""
    freed = 0
    dying: list[Path] = []
    for name in names:
        path = files.directory / name
        with contextlib.suppress(FileNotFoundError):
            freed += path.stat().st_size
            hidden = files.directory / f".{name}{DEAD}"
            os.rename(path, hidden)
            dying.append(hidden)
    if dying:
        time.sleep(READER_GRACE)
    for path in dying:
        give_back(path)
    if names:
        _sync_dir(files)
    return freed


def give_back(path: Path) -> None:
    """Shrink a dead segment a step at a time, then unlink it."""
    with contextlib.suppress(FileNotFoundError):
        size = path.stat().st_size
        while size > GIVE_BACK_STEP:
            size -= GIVE_BACK_STEP
            os.truncate(path, size)
            time.sleep(GIVE_BACK_PAUSE)
        path.unlink()


async def repoint_bodies(tx: Tx, moves: Sequence[Move]) -> None:
    """The change that repoints rows to their bodies' copies, on disk already: SQLite's
    alone (PostgreSQL keeps bodies in rows), so kept here, not in store/queue.py; serve's
    writer process runs it by name too (sqlite/writer.py SQLITE_CHANGES)."""
    await tx.executemany("repoint_body", moves)


def plan(
    segments: Sequence[Segment], live_ratio: float, now: float
) -> tuple[list[str], list[list[Segment]]]:
    """(the segments to delete as they are, groups of settled sparse segments to rewrite
    together, each group's live bytes within one segment's size)."""
    dead = [s.name for s in segments if not s.live]
    sparse = [
        s
        for s in segments
        if s.live and s.live_bytes < live_ratio * s.size and now - s.written >= SETTLE
    ]
    groups: list[list[Segment]] = []
    total = SEGMENT_MAX
    for s in sparse:
        if total + s.live_bytes > SEGMENT_MAX:
            groups.append([])
            total = 0
        groups[-1].append(s)
        total += s.live_bytes
    return dead, groups


async def compact(
    files: BodyFiles,
    live_ratio: float,
    batch: int,
    live: Callable[[str], Awaitable[Live]],
    repoint: Callable[[list[Move]], Awaitable[None]],
    in_use: Callable[[str], Awaitable[bool]],
) -> Compaction:
    """One compaction round. live / repoint / in_use: the store's read of a segment's
    live bodies, its repoint change (one transaction per call of `batch` moves) and its
    check for a row still naming a segment. File work runs off the event loop."""
    with compaction_lock(files.directory) as held:
        if not held:
            return Compaction(busy=True)
        sizes = await asyncio.to_thread(closed_segments, files.directory)
        segments = [
            Segment(name, size, written, await live(name))
            for name, (size, written) in sorted(sizes.items())
        ]
        dead, groups = plan(segments, live_ratio, time.time())
        rewritten = moved = 0
        for group in groups:
            _, moves = await asyncio.to_thread(rewrite, files, group)
            for i in range(0, len(moves), batch):
                await repoint(moves[i : i + batch])
            moved += sum(s.live_bytes for s in group)
            for s in group:
                if not await in_use(s.name):  # every live body now reads from the new one
                    dead.append(s.name)
                    rewritten += 1
        freed = await asyncio.to_thread(remove, files, dead)
    return Compaction(deleted=len(dead), rewritten=rewritten, moved_bytes=moved, freed_bytes=freed)


def _write_all(fd: int, data: bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_dir(files: BodyFiles) -> None:
    if files.fsync:
        fd = os.open(files.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
