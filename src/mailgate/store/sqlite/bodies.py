"""Message bodies of the SQLite store, kept in append-only segment files beside it, and
the rule that decides which bodies go there.

A body inside SQLite is written twice (WAL, then checkpoint), in 4 KB pages with a
write() call each: most of the kernel time of taking in large mail. Here the writer
thread appends a whole commit group's bodies (`writes`: each large one alone) with one
fdatasync before the commit that references them, so a committed row always points at
bytes on disk; a read gives the body's pages back to the kernel (`drop_pages`). Bytes
appended by a commit that then failed are never referenced. Each process writes its own
segments (named by a new id), so the server's children never share one.

Retention empties bodies; compaction (compaction.py) then removes or rewrites segments
no process appends to any more. Which those are, every process can tell: a segment is
born under a hidden name, locked (a shared flock, held while it is this process's
segment to append to) and only then renamed to its own name, so a visible segment
nobody holds a lock on will never be appended to again, whoever wrote it and whether or
not that process is still alive (the kernel drops a dead process's locks).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import time
from collections.abc import Sequence
from pathlib import Path

from mailgate.errors import StoreError, StoreUnavailable
from mailgate.models import new_id
from mailgate.store.protocols import BodyMoved
from mailgate.store.rows import INLINE_COLUMNS, MessageRow

# Bytes, and seconds, before the next body opens a new segment. Only a segment no longer
# appended to can be compacted: 64 MiB (at 2 KB messages, about 30 s of a busy server's
# intake) and an hour (a quiet server's) bound what retention cannot give back yet, where
# 1 GiB held a whole gigabyte of dead bodies for as long as the process ran.
SEGMENT_MAX = 64 << 20
SEGMENT_MAX_AGE = 3600.0
SUFFIX = ".seg"
NEW = ".new"  # a segment being born: `.<name>.new`, never read, never compacted
# Bodies go to body files from this size, when a commit group carries at least
# BODY_FILE_GROUP_MIN bytes of them; else they stay in the row.
BODY_FILE_MIN = 512
BODY_FILE_GROUP_MIN = 64 * 1024
PAGE = mmap.PAGESIZE
SPLIT_AT = 4 * PAGE  # a body this large ends its own write (`writes`)


class BodyFiles:
    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        self._name: str | None = None
        self._fd: int | None = None
        self._opened = 0.0  # monotonic time the current segment was opened
        # segments moved on from inside a transaction not yet ended: still locked, as a
        # row naming them may yet commit (release_retired, after the transaction)
        self._retired: list[int] = []

    def append(self, bodies: Sequence[bytes]) -> list[tuple[str, int]]:
        """Write the bodies, durably; (segment name, offset) of each. Writer thread only."""
        try:
            if (
                self._fd is None
                or os.fstat(self._fd).st_size > SEGMENT_MAX
                or time.monotonic() - self._opened > SEGMENT_MAX_AGE
            ):
                self._open_segment()
            assert self._fd is not None and self._name is not None
            offset = os.lseek(self._fd, 0, os.SEEK_END)  # after any failed write's bytes
            for chunk in writes(bodies):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._fd, view) :]
            if self.fsync:
                os.fdatasync(self._fd)
        except OSError as exc:  # disk full, I/O error: nothing is acknowledged
            raise StoreUnavailable(f"store: cannot write message bodies: {exc.strerror}") from None
        places = []
        for body in bodies:
            places.append((self._name, offset))
            offset += len(body)
        return places

    def read(self, name: str, offset: int, size: int) -> bytes:
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad segment name {name!r}")
        try:
            fd = os.open(self.directory / name, os.O_RDONLY)
        except FileNotFoundError:  # compaction moved it since the row was read
            raise BodyMoved(name) from None
        try:
            body = os.pread(fd, size, offset)
            if self.fsync:  # unsynced pages are dirty: the kernel would only start their writeback
                drop_pages(fd, offset, size)
        finally:
            os.close(fd)
        if len(body) != size:  # a cut segment: never hand on a partial message as whole
            raise StoreError(f"store: body {name}@{offset} is {len(body)} of {size} bytes")
        return body

    def _open_segment(self) -> None:
        if self._fd is not None:
            self._retired.append(self._fd)
            self._fd = self._name = None
        if not self.directory.exists():
            # exist_ok: another process of the server may create it between the two calls
            # (two ingress processes' first large bodies once got 451 "File exists")
            self.directory.mkdir(parents=True, exist_ok=True)
            self._sync_dir(self.directory.parent)
        name = f"{new_id()}{SUFFIX}"
        hidden = self.directory / f".{name}{NEW}"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            # held until this process moves on to another segment (or dies): "still
            # appended to" for compaction, before the segment is seen under its name
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.rename(hidden, self.directory / name)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._name, self._opened = fd, name, time.monotonic()
        self._sync_dir(self.directory)  # the new name itself must survive a crash

    def _sync_dir(self, directory: Path) -> None:
        if self.fsync:
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def release_retired(self) -> None:
        """After each transaction: segments this process has moved on from are let go
        (their lock with them), every row naming them committed or rolled back."""
        while self._retired:
            os.close(self._retired.pop())

    def close(self) -> None:
        self.release_retired()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = self._name = None


def writes(bodies: Sequence[bytes]) -> list[bytes]:
    """The bodies as writes: each large one (SPLIT_AT or more) alone, the small ones
    between them joined. The page cache takes a write in large folios, and a folio can
    be dropped only whole: one across two bodies would stay cached after both were read
    (with a group in one write, two thirds of a busy server's read bodies stayed)."""
    out: list[bytes] = []
    small: list[bytes] = []
    for body in bodies:
        if len(body) < SPLIT_AT:
            small.append(body)
            continue
        if small:
            out.append(b"".join(small))
            small = []
        out.append(body)
    if small:
        out.append(b"".join(small))
    return out


def drop_pages(fd: int, offset: int, size: int) -> None:
    """Let the kernel drop the cached pages wholly inside a body just read: a body is read
    about once (by its delivery), and the pages given back are the ones the next appends
    take, already mapped and warm. Kept cached, delivered bodies grew the page cache by
    every body taken in, each append taking fresh pages (a 100 KB append cost 35-95 µs
    instead of 7, ~10% of the CPU of taking in and delivering 100 KB mail). Synced pages
    are clean, so this drops them; a later read (a retry, a DSN, the dashboard) reads
    the disk."""
    start = -(-offset // PAGE) * PAGE  # the first page boundary at or after offset
    if offset + size - start >= PAGE:  # at least one whole page
        os.posix_fadvise(fd, start, offset + size - start, os.POSIX_FADV_DONTNEED)


def place(files: BodyFiles, rows: Sequence[MessageRow]) -> Sequence[MessageRow]:
    """The rows with their large bodies moved to a body file (raw b"", body_file and
    body_offset set), on disk before this returns; or the rows as they are when the
    group's large bodies are too few to be worth an fdatasync of their own.

    Placing again is a no-op, so rows placed before the write turn (SqliteEngine's
    early placement) pass through the insert: a placed row has its body_file, and a
    group that stayed inline has no subset that would move."""
    spill = [i for i, r in enumerate(rows) if r.body_file is None and len(r.raw) >= BODY_FILE_MIN]
    if not spill or sum(len(rows[i].raw) for i in spill) < BODY_FILE_GROUP_MIN:
        return rows
    out = list(rows)
    places = files.append([rows[i].raw for i in spill])
    for i, (name, offset) in zip(spill, places, strict=True):
        out[i] = MessageRow._make((*rows[i][: INLINE_COLUMNS - 1], b"", name, offset))
    return out
