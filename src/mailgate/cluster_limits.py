"""Limits that hold across the nodes of one PostgreSQL cluster.

Within a node, every process shares the limit tables in memory (shared.py): no round
trip per request. Across nodes, each process tells the database once a second what it
changed (a row per limit name: its takes and failures ever, what it holds open now), and
one process per node (whoever holds `shared/cluster.lock`) reads the other nodes' rows
changed since its last read and applies them to the node's tables:

    rate buckets     the tokens the other nodes took since last read, debited here
    failed logins    their failures, added here at the time they happened
    connections      what they hold open now, counted here under one entry

So two nodes give a client its configured rate and login attempts, not twice them,
within about two seconds of lag (a burst that fits in the lag is paid back from the next
seconds' tokens, shared.DEBT_SECONDS). The server-wide connection total (`*`) is each
node's own: it protects one machine's resources.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailgate.errors import StoreError
from mailgate.shared import SharedBuckets, SharedCounts, SharedEvents
from mailgate.store.postgres import LimitRow, PostgresStore

log = logging.getLogger("mailgate.cluster")
INTERVAL = 1.0  # seconds between two rounds
HEARTBEAT = 5.0  # what a process holds open is told again this often
FRESH = 15.0  # a count held open, not told again for this long, is a dead node's
KEEP = 3600.0  # rows unchanged this long are removed (their process is gone)
MARGIN = 5.0  # rows are read again this far back: a write commits after its clock time
LOCAL_ONLY = frozenset({"*"})  # counted per node (the server-wide connection total)


def node_id(shared: Path) -> str:
    """This node's name for the others: made once per data directory."""
    path = shared / "node-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    shared.mkdir(parents=True, exist_ok=True)
    made = shared / f"node-id.{os.getpid()}"
    made.write_text(uuid.uuid4().hex)
    try:  # the first process to link wins; the others read its name
        os.link(made, path)
    except FileExistsError:
        pass
    finally:
        made.unlink()
    return path.read_text().strip()


@dataclass
class Tables:
    """A process's limit tables by the name the cluster knows them under."""

    buckets: dict[str, SharedBuckets] = field(default_factory=dict)
    events: dict[str, SharedEvents] = field(default_factory=dict)
    counts: dict[str, SharedCounts] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.buckets or self.events or self.counts)


@dataclass
class Journal:
    """What this process last told the cluster, to tell only what changed."""

    told: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    heartbeat: float = 0.0

    def changes(self, tables: Tables, now: float) -> list[LimitRow]:
        rows: list[LimitRow] = []
        beat = now - self.heartbeat >= HEARTBEAT
        if beat:
            self.heartbeat = now
        for tab, buckets in tables.buckets.items():  # names: API key ids, a bounded set
            for name, (total, last) in list(buckets.taken.items()):
                self._row(rows, tab, name, total, last, 0, False)
        for tab, events in tables.events.items():
            for name, (total, last) in list(events.added.items()):
                self._row(rows, tab, name, total, last, 0, False)
                if last < now - events.window:  # nothing of it counts any more anywhere
                    events.added.pop(name, None)  # (a later failure starts a new count)
                    self.told.pop((tab, name), None)
        for tab, counts in tables.counts.items():
            names = set(counts.changed) | (set(counts.mine) if beat else set())
            counts.changed.clear()
            for name in names - LOCAL_ONLY:
                held = counts.mine.get(name, 0)
                self._row(rows, tab, name, 0, now, held, beat and held > 0)
                if not held:
                    self.told.pop((tab, name), None)
        return rows

    def _row(
        self,
        rows: list[LimitRow],
        tab: str,
        name: str,
        total: int,
        at: float,
        held: int,
        again: bool,
    ) -> None:
        before = self.told.get((tab, name))
        if not again and before == (total, held):
            return
        self.told[(tab, name)] = (total, held)
        step = total - before[0] if before is not None and total >= before[0] else total
        rows.append((tab, name, total, step, at, held))


def taken_since(seen: tuple[int, float] | None, total: int, step: int, changed: float) -> int:
    """How much of a row is new to the reader. `seen`: its total and change time when last
    read (None: never: a new process, or one whose count started again)."""
    if seen is None:
        return step
    if changed == seen[1]:  # read again, unchanged (the margin re-reads rows)
        return 0
    if total > seen[0]:
        return total - seen[0]
    return step  # its count started again (a failure after the window had passed)


@dataclass
class Seen:
    """What the applying process has read of the other nodes' rows."""

    # (node, proc, table, name) -> (its total when last read, its change time)
    totals: dict[tuple[str, str, str, str], tuple[int, float]] = field(default_factory=dict)
    held: dict[tuple[str, str, str, str], tuple[int, float]] = field(default_factory=dict)
    applied: dict[tuple[str, str], int] = field(default_factory=dict)  # (tab, name) -> held
    since: float = 0.0  # the database clock of the last read
    first: bool = True
    pruned: float = 0.0

    def apply(self, rows: list[tuple[Any, ...]], clock: float, tables: Tables, now: float) -> None:
        for node, proc, tab, name, total, step, last_at, held, changed in rows:
            key = (node, proc, tab, name)
            if tab in tables.counts:
                self.held[key] = (int(held), float(changed))
                continue
            seen = self.totals.get(key)
            if self.first and seen is None:  # from before this process listened: failures
                taken = int(total) if tab in tables.events else 0  # in their window count
            else:
                taken = taken_since(seen, int(total), int(step), float(changed))
            self.totals[key] = (int(total), float(changed))
            if taken <= 0:
                continue
            if tab in tables.buckets:
                tables.buckets[tab].debit(name, taken, now)
            elif tab in tables.events:
                tables.events[tab].add(name, now, count=taken, at=float(last_at))
        self._apply_held(clock, tables)
        self.since, self.first = clock, False
        if clock - self.pruned > KEEP / 10:  # forget what the database forgets too
            self.pruned = clock
            for key, (_, changed) in list(self.totals.items()):
                if changed < clock - KEEP:
                    del self.totals[key]

    def _apply_held(self, clock: float, tables: Tables) -> None:
        sums: dict[tuple[str, str], int] = {}
        for key, (held, changed) in list(self.held.items()):
            if changed < clock - FRESH:
                del self.held[key]
                continue
            tab, name = key[2], key[3]
            sums[(tab, name)] = sums.get((tab, name), 0) + held
        for tab, name in set(sums) | set(self.applied):
            count = sums.get((tab, name), 0)
            if self.applied.get((tab, name), 0) != count:
                tables.counts[tab].set_other_nodes(name, count)
            if count:
                self.applied[(tab, name)] = count
            else:
                self.applied.pop((tab, name), None)


class ClusterLimits:
    """The component: every process with limit tables tells; one per node applies."""

    def __init__(
        self, store: PostgresStore, shared: Path, tables: Tables, interval: float = INTERVAL
    ) -> None:
        self.store, self.tables, self.interval = store, tables, interval
        self.node = node_id(shared)
        self.proc = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.lock_path = shared / "cluster.lock"
        self.journal, self.seen = Journal(), Seen()
        self._lock_fd: int | None = None
        self._last_cleanup = 0.0
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def stop(self, grace: float) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except StoreError as exc:  # the database is away: limits stay per node meanwhile
                log.warning("cluster limits: %s", exc)
            except Exception:
                log.exception("cluster limits: a round failed; trying again")
            await asyncio.sleep(self.interval)

    async def round(self) -> None:
        now = time.time()
        rows = self.journal.changes(self.tables, now)
        if rows:
            await self.store.publish_limits(self.node, self.proc, rows)
        if not self._applier():
            return
        found, clock = await self.store.other_nodes_limits(self.node, self.seen.since - MARGIN)
        self.seen.apply(found, clock, self.tables, time.time())
        if now - self._last_cleanup > 60:
            self._last_cleanup = now
            await self.store.forget_limits(KEEP)

    def _applier(self) -> bool:
        """Whether this process applies the other nodes' rows (holds the node's lock)."""
        if self._lock_fd is None:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._lock_fd = fd
        return True
