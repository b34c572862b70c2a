"""The mailbox sync as a component of the process that delivers (app.py starts it like
retention): every valid grant gets a loop of sync passes every `poll_interval`, and an
IDLE watch on INBOX where the server offers it (at most half of `max_connections`).

One process syncs a grant at a time, across serve's delivery children and PostgreSQL
nodes: it holds the grant's lease in the store (renewed before each pass; a dead
process's lease runs out after LEASE seconds, or three intervals, and another takes it).

A grant whose credentials are refused is marked invalid and left alone until it is
re-authenticated (set valid again); an unreachable server is tried again next interval.
Nothing is lost when a connection drops: each batch commits the UID it reached."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from mailgate.errors import MailboxAuthRefused, MailboxError, StoreError
from mailgate.mailboxes import sync
from mailgate.mailboxes.models import Grant, GrantStatus
from mailgate.mailboxes.service import Mailboxes, _owner

log = logging.getLogger("mailgate.mailboxes")
LEASE = 300.0  # seconds a grant's sync lease lasts at least


class MailboxSync:
    def __init__(self, mailboxes: Mailboxes) -> None:
        self.mailboxes = mailboxes
        self.cfg = mailboxes.cfg
        self.loops: dict[str, asyncio.Task[None]] = {}
        self.watches: dict[str, asyncio.Task[None]] = {}
        self.wakes: dict[str, asyncio.Event] = {}
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.me = f"{os.uname().nodename}:{os.getpid()}"
        self.lease = max(LEASE, 3 * self.cfg.poll_interval)

    async def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name="mailbox-sync")

    async def stop(self, grace: float = 0.0) -> None:
        """Passes in flight are cut (each batch is committed: nothing is lost)."""
        self.stopping.set()
        watching = [t for t in self.watches.values() if not t.done()]
        if watching:  # they see `stopping` within a second and log out cleanly
            await asyncio.wait(watching, timeout=max(grace, 2.0))
        tasks = [t for t in (self.task, *self.loops.values(), *self.watches.values()) if t]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        for grant_id in list(self.loops):  # another process may take them at once
            with contextlib.suppress(StoreError):
                await self.mailboxes.store.release_mailbox_lease(grant_id, self.me)

    async def run(self) -> None:
        """Keep one loop per valid grant; look for new and removed grants each interval."""
        while not self.stopping.is_set():
            try:
                grants = [
                    g for g in await self.mailboxes.store.grants() if g.status is GrantStatus.VALID
                ]
            except StoreError as exc:
                log.warning("mailbox sync: cannot read grants: %s", exc)
                grants = []
            wanted = {g.id for g in grants}
            for gid in [g for g in self.loops if g not in wanted or self.loops[g].done()]:
                self._forget(gid)
            for g in grants:
                if g.id not in self.loops:
                    self.wakes[g.id] = asyncio.Event()
                    self.loops[g.id] = asyncio.create_task(self._grant_loop(g), name=f"sync-{g.id}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.cfg.poll_interval)

    def _forget(self, grant_id: str) -> None:
        for tasks in (self.loops, self.watches):
            task = tasks.pop(grant_id, None)
            if task is not None:
                task.cancel()
        self.wakes.pop(grant_id, None)

    async def _grant_loop(self, grant: Grant) -> None:
        wake = self.wakes[grant.id]
        while not self.stopping.is_set():
            wake.clear()
            try:
                now = time.time()
                mine = await self.mailboxes.store.claim_mailbox_lease(
                    grant.id, self.me, now, now + self.lease
                )
                if not mine:  # another process syncs it
                    watch = self.watches.pop(grant.id, None)
                    if watch is not None:
                        watch.cancel()
                    await asyncio.sleep(self.cfg.poll_interval)
                    continue
                await self.mailboxes.sync_now(grant)
            except MailboxAuthRefused as exc:  # sync_now marked it invalid
                log.warning("mailbox %s: %s; the grant is invalid now", grant.id, exc)
                return
            except (MailboxError, StoreError) as exc:
                log.info("mailbox %s: sync pass failed, trying again: %s", grant.id, exc)
            except Exception:  # a bug: said once, and the next interval tries again
                log.exception("mailbox %s: sync pass failed", grant.id)
            else:
                self._watch(grant)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.cfg.poll_interval)

    def _watch(self, grant: Grant) -> None:
        """Start the IDLE watch of INBOX unless it runs, or too many do."""
        running = self.watches.get(grant.id)
        if running is not None and not running.done():
            return
        if not self.cfg.idle:
            return
        if sum(not t.done() for t in self.watches.values()) >= self.mailboxes.idle_max:
            return
        self.watches[grant.id] = asyncio.create_task(self._idle(grant), name=f"idle-{grant.id}")

    async def _idle(self, grant: Grant) -> None:
        try:
            async with self.mailboxes.connection(grant) as conn:
                if not conn.idle:
                    return
                await sync.watch_inbox(
                    self.mailboxes.store,
                    _owner(grant),
                    conn,
                    self.stopping,
                    self.cfg.initial_sync_days,
                    self.mailboxes.clock,
                )
        except (MailboxError, StoreError) as exc:  # the next pass starts it again
            log.info("mailbox %s: IDLE ended: %s", grant.id, exc)
        except Exception:
            log.exception("mailbox %s: IDLE ended", grant.id)
