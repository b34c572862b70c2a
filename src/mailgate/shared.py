"""Small fixed-size tables that every process of one server reads and changes: the
limits (rate buckets, failed logins) must hold for the server, not for each of its
ingress processes (two processes had given a client twice its rate and twice the login
attempts).

A table is a file in the data directory mapped into each process (`mmap`), a run of
fixed-size slots found by open addressing on a 64-bit hash of the name; every operation
runs under an exclusive `flock` of the file (a few microseconds: no round trip to the
database on every request). A slot not touched for `ttl` seconds is free again, so the
table never fills with names seen once. With no path the table is private to the
process (an anonymous map, no lock): the same code for tests and single processes.

Across the nodes of a PostgreSQL cluster, cluster_limits.py carries each process's own
changes (its journal below) to the others once a second and applies the other nodes'
changes here: a second node does not double a limit either, within a second's lag.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("mailgate.shared")
_SLOT_HEAD = struct.Struct("<Qd")  # name hash (0: empty), last use (Unix time)
_FILE_HEAD = struct.Struct("<8sII")  # magic, slots, payload size
_GENERATION = struct.Struct("<Q")  # after the head: bumped by every change to the table
MAGIC = b"mgshare2"
PROBES = 32  # slots looked at for one name before the least recently used is taken


class SharedTable:
    def __init__(
        self,
        payload: int,
        slots: int = 8192,
        path: Path | None = None,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.payload, self.slots, self.ttl, self.clock = payload, slots, ttl, clock
        self.slot_size = _SLOT_HEAD.size + payload
        self._first = _FILE_HEAD.size + _GENERATION.size  # where the slots begin
        size = self._first + slots * self.slot_size
        self._fd: int | None = None
        if path is not None:
            try:
                self._fd = self._open(path, size)
            except OSError as exc:  # a full disk: limits per process rather than none
                log.warning(
                    "shared limits: %s unusable (%s); this process keeps its own", path, exc
                )
        if self._fd is None:
            self._map = mmap.mmap(-1, size)
            _FILE_HEAD.pack_into(self._map, 0, MAGIC, slots, payload)
        else:
            self._map = mmap.mmap(self._fd, size)

    def _open(self, path: Path, size: int) -> int:
        """The table's file, made whole if new. Its blocks are allocated up front: a
        page of a sparse map that cannot be given a block on a full disk is SIGBUS, a
        crash, where a failed allocation here is an error this process can live with."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # named by layout: processes configured differently get files of their own, never
        # one resized under another's map
        path = path.with_name(f"{path.stem}-{self.slots}x{self.payload}{path.suffix}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            with _Lock(fd):
                head = os.pread(fd, _FILE_HEAD.size, 0)
                if head != _FILE_HEAD.pack(MAGIC, self.slots, self.payload):  # new
                    os.ftruncate(fd, 0)
                    os.posix_fallocate(fd, 0, size)
                    os.pwrite(fd, _FILE_HEAD.pack(MAGIC, self.slots, self.payload), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def close(self) -> None:
        self._map.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _locked(self) -> _Lock:
        return _Lock(self._fd)

    def update(
        self,
        name: str,
        change: Callable[[bytes | None], tuple[bytes | None, T]],
        evict: bool = True,
    ) -> T:
        """Run `change` on the name's payload (None: not there) under the lock; it returns
        the payload to keep (None: leave the slot as it was; b"": free the slot) and a
        result for the caller. evict=False: a name not there takes only a free slot, never
        another name's (with none free, what `change` returns is not kept)."""
        key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest()) or 1
        with self._locked():
            now = self.clock()
            offset, free = self._find(key, now)
            stored_key, used = _SLOT_HEAD.unpack_from(self._map, offset)
            current = None
            if stored_key == key and used >= now - self.ttl:
                start = offset + _SLOT_HEAD.size
                current = bytes(self._map[start : start + self.payload])
            new, result = change(current)
            if new is not None and stored_key != key and not free and not evict:
                new = None  # no room without taking a live name's slot: not kept
            if new == b"":
                if stored_key == key:
                    _SLOT_HEAD.pack_into(self._map, offset, 0, 0.0)
                    _GENERATION.pack_into(self._map, _FILE_HEAD.size, self.generation() + 1)
                new = None
            if new is not None:
                assert len(new) == self.payload
                _SLOT_HEAD.pack_into(self._map, offset, key, now)
                self._map[offset + _SLOT_HEAD.size : offset + self.slot_size] = new
                _GENERATION.pack_into(self._map, _FILE_HEAD.size, self.generation() + 1)
            return result

    def generation(self) -> int:
        """How many changes the table has seen (read without the lock: a reader that
        remembers an answer for a generation knows nothing changed while it is the same)."""
        return int(_GENERATION.unpack_from(self._map, _FILE_HEAD.size)[0])

    def _find(self, key: int, now: float) -> tuple[int, bool]:
        """The slot holding `key`, else the first free (empty or stale) one probed, else
        the least recently used of those probed; and whether it is free."""
        first = key % self.slots
        free = oldest = -1
        oldest_used = float("inf")
        for i in range(PROBES):
            offset = self._first + ((first + i) % self.slots) * self.slot_size
            stored_key, used = _SLOT_HEAD.unpack_from(self._map, offset)
            if stored_key == key:
                return offset, False
            if free < 0 and (stored_key == 0 or used < now - self.ttl):
                free = offset
            if used < oldest_used:
                oldest, oldest_used = offset, used
        return (free, True) if free >= 0 else (oldest, False)


class _Lock:
    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


# -- what the limits keep ------------------------------------------------------------------

_BUCKET = struct.Struct("<dd")  # tokens, when


# How far other nodes' use can put a bucket below empty (in seconds of its rate): what
# they took while this node could not yet know is paid back, not forgiven.
DEBT_SECONDS = 5.0


class SharedBuckets:
    """Token buckets by name in a SharedTable: `rate` a second, up to `burst` at once."""

    def __init__(self, rate: float, burst: float, path: Path | None = None) -> None:
        self.rate, self.burst = rate, burst
        self.table = SharedTable(_BUCKET.size, path=path, ttl=max(60.0, burst / max(rate, 1e-9)))
        # this process's takes by name (for the cluster): (how many ever, the last one)
        self.taken: dict[str, tuple[int, float]] = {}

    def take(self, name: str, now: float) -> float:
        """0.0 and one token taken, or the seconds until a token is free."""

        def change(payload: bytes | None) -> tuple[bytes | None, float]:
            tokens, last = _BUCKET.unpack(payload) if payload else (self.burst, now)
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            if tokens < 1:
                return None, (1 - tokens) / self.rate
            return _BUCKET.pack(tokens - 1, now), 0.0

        wait = self.table.update(name, change)
        if not wait:
            self.taken[name] = (self.taken.get(name, (0, 0.0))[0] + 1, now)
        return wait

    def debit(self, name: str, tokens: float, now: float) -> None:
        """Take what another node took (cluster_limits.py): the bucket may go below
        empty, down to DEBT_SECONDS of its rate."""

        def change(payload: bytes | None) -> tuple[bytes, None]:
            have, last = _BUCKET.unpack(payload) if payload else (self.burst, now)
            have = min(self.burst, have + max(0.0, now - last) * self.rate)
            return _BUCKET.pack(max(-DEBT_SECONDS * self.rate, have - tokens), now), None

        self.table.update(name, change)


class SharedEvents:
    """The times of recent events (failed logins) by name, the newest `keep` of them, in a
    SharedTable: how many fell within `window`, and the oldest of those."""

    def __init__(self, keep: int, window: float, path: Path | None = None) -> None:
        self.keep, self.window = keep, window
        self._times = struct.Struct(f"<I{keep}d")  # count kept, then the times (a ring)
        self.table = SharedTable(self._times.size, path=path, ttl=window)
        self._none: dict[str, int] = {}  # name -> the generation it was found empty at
        self.added: dict[str, tuple[int, float]] = {}  # this process's: name -> (ever, last)

    def _recent(self, payload: bytes | None, now: float) -> list[float]:
        if payload is None:
            return []
        count, *times = self._times.unpack(payload)
        return sorted(t for t in times[: min(count, self.keep)] if t >= now - self.window)

    def add(self, name: str, now: float, count: int = 1, at: float | None = None) -> int:
        """Record `count` events at `at` (default now; another node's are older); how
        many fall within the window now (these included)."""
        when = now if at is None else at

        def change(payload: bytes | None) -> tuple[bytes | None, int]:
            times = sorted([*self._recent(payload, now), *[when] * count])[-self.keep :]
            times = [t for t in times if t >= now - self.window]
            padded = times + [0.0] * (self.keep - len(times))
            return self._times.pack(len(times), *padded), len(times)

        if at is None:  # this process's own: the cluster hears of it
            ever = self.added.get(name, (0, 0.0))[0]
            self.added[name] = (ever + count, now)
        return self.table.update(name, change)

    def recent(self, name: str, now: float) -> list[float]:
        """The times within the window, oldest first. Asked on every request and nearly
        always empty: a name found empty is not looked up again (no lock, no probe)
        until the table changes."""
        generation = self.table.generation()
        if self._none.get(name) == generation:
            return []
        found = self.table.update(name, lambda payload: (None, self._recent(payload, now)))
        if not found:
            if len(self._none) > 10_000:
                self._none.clear()
            self._none[name] = generation
        return found


_PAIR = struct.Struct("<II")  # (pid, count): SharedCounts' slots are rows of these
ALIVE_FOR = 1.0  # seconds a process seen running is taken as running (SharedCounts)


def alive(pid: int) -> bool:
    """A process that runs (a zombie does not: a killed child's parent may not have
    reaped it yet, and kill(pid, 0) still finds it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :][:1] not in ("Z", "X")


class SharedCounts:
    """Things held open by name (connections from one address) summed over the server's
    processes: each process counts its own in the name's slot, and the counts of a
    process that died (its connections went with it) are dropped when next seen."""

    PROCESSES = 72  # processes that can count one name at once (ingress_processes <= 64)
    OTHER_NODES = 0xFFFFFFFF  # the pid the other nodes' count is kept under (no real pid)

    def __init__(self, path: Path | None = None, slots: int = 8192) -> None:
        self._entries = struct.Struct(f"<{2 * self.PROCESSES}I")  # (pid, count) pairs
        # a day: a slot's last use is refreshed on every open and close of its name
        self.table = SharedTable(self._entries.size, slots, path, ttl=86400.0)
        self.pid = os.getpid()
        self.mine: dict[str, int] = {}  # this process's open things by name (for the cluster)
        self.changed: set[str] = set()  # names whose count here changed since last told
        self._seen_alive: dict[int, float] = {}  # pid -> when /proc last showed it running

    def _counts(self, payload: bytes | None) -> dict[int, int]:
        if payload is None:
            return {}
        counts: dict[int, int] = {}
        for pid, n in _PAIR.iter_unpack(payload):
            if not pid:  # _pack writes the pairs first: the rest is zeros
                break
            if n and (pid in (self.pid, self.OTHER_NODES) or self._alive(pid)):
                counts[pid] = n
        return counts

    def _alive(self, pid: int) -> bool:
        """alive(pid), taken as still true for ALIVE_FOR after /proc last said so: every
        open and close of a connection asks about each other ingress process, and the
        /proc read cost a connection-per-message client ~8% of the server's time. A
        process that died counts for at most that long more."""
        now = time.monotonic()
        seen = self._seen_alive.get(pid)
        if seen is not None and now - seen < ALIVE_FOR:
            return True
        if not alive(pid):
            self._seen_alive.pop(pid, None)
            return False
        if len(self._seen_alive) > self.PROCESSES * 4:  # pids of long-gone processes
            self._seen_alive.clear()
        self._seen_alive[pid] = now
        return True

    def _pack(self, counts: dict[int, int]) -> bytes:
        """The pairs first, then zeros to the slot's size (a few pairs and 500-odd zero
        bytes, where packing all 144 integers was ~2% of a connection's cost)."""
        pairs = list(counts.items())[: self.PROCESSES]
        packed = b"".join(_PAIR.pack(pid, n) for pid, n in pairs)
        return packed.ljust(self._entries.size, b"\0")

    def acquire(self, name: str, cap: int) -> bool:
        """Count one more for this process, unless the server's total is at `cap`. A
        name never takes a slot that counts another name's open things (with none free
        the connection is let in uncounted: a flood of distinct addresses can only make
        the cap looser, never lock a client out or free another's count)."""

        def change(payload: bytes | None) -> tuple[bytes | None, bool]:
            counts = self._counts(payload)
            if sum(counts.values()) >= cap:
                return None, False
            counts[self.pid] = counts.get(self.pid, 0) + 1
            if len(counts) > self.PROCESSES:
                return None, False
            return self._pack(counts), True

        taken = self.table.update(name, change, evict=False)
        if taken:
            self._mine(name, +1)
        return taken

    def _mine(self, name: str, step: int) -> None:
        n = self.mine.get(name, 0) + step
        if n > 0:
            self.mine[name] = n
        else:
            self.mine.pop(name, None)
        self.changed.add(name)

    def set_other_nodes(self, name: str, count: int) -> None:
        """What the other nodes hold under the name now (cluster_limits.py)."""

        def change(payload: bytes | None) -> tuple[bytes | None, None]:
            counts = self._counts(payload)
            if counts.get(self.OTHER_NODES, 0) == count:
                return None, None
            counts[self.OTHER_NODES] = count
            left = {p: n for p, n in counts.items() if n}
            return (self._pack(left) if left else b""), None

        self.table.update(name, change, evict=False)

    def release(self, name: str) -> None:
        if name in self.mine:
            self._mine(name, -1)

        def change(payload: bytes | None) -> tuple[bytes | None, None]:
            if payload is None:  # not counted (or not found): nothing of ours to give back
                return None, None
            counts = self._counts(payload)
            counts[self.pid] = max(0, counts.get(self.pid, 0) - 1)
            left = {p: n for p, n in counts.items() if n}
            return (self._pack(left) if left else b""), None  # at zero the slot is free

        self.table.update(name, change, evict=False)

    def held(self, name: str) -> int:
        """The server's count for the name now."""
        return self.table.update(name, lambda payload: (None, sum(self._counts(payload).values())))
