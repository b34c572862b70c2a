"""The sync component: new mail while IDLE, a server that goes away mid-sync and comes
back (nothing lost, nothing twice), and how many connections it holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mailgate.errors import MailboxUnreachable
from mailgate.mailboxes.models import MessageFilter
from mailgate.mailboxes.runner import MailboxSync
from mailgate.models import EventKind
from tests.mailboxes.conftest import Box, a_user, add_grant, count_connections, wired
from tests.mailboxes.dovecot import Dovecot, message


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def total(b: Box) -> int:
    return sum(f.total for f in await b.mailboxes.folders(b.grant))


async def test_new_mail_arrives_while_idle(dovecot: Dovecot, tmp_path: Path) -> None:
    # polling only every 60 s: within the 10 s waited, only IDLE can bring the message
    async with wired(dovecot, f"sqlite:///{tmp_path / 'm.db'}", tmp_path, poll_interval=60) as b:
        b.server.append(b.user, message("Before"))
        runner = MailboxSync(b.mailboxes)
        await runner.start()
        try:
            await until(lambda: _synced(b))
            b.server.append(b.user, message("While idle", message_id="<idle@example.net>"))
            await until(lambda: _has(b, "While idle"))
        finally:
            await runner.stop()
        (m,), _ = await b.mailboxes.messages(b.grant, MessageFilter(subject="While idle"))
        assert [e.kind for e in await b.store.events(m.id)] == [EventKind.MAILBOX_CREATED]


async def _synced(b: Box) -> bool:
    return (await b.refresh()).synced_at is not None


async def _has(b: Box, subject: str) -> bool:
    return bool((await b.mailboxes.messages(b.grant, MessageFilter(subject=subject)))[0])


async def test_a_move_seen_by_idle_keeps_the_id(dovecot: Dovecot, tmp_path: Path) -> None:
    """IDLE sees the message leave INBOX first; the next pass finds it in Archive: the
    same id, one message.updated, never a message.deleted."""
    async with wired(dovecot, f"sqlite:///{tmp_path / 'm.db'}", tmp_path, poll_interval=3) as b:
        b.server.append(b.user, message("Moving", message_id="<moving@example.net>"))
        runner = MailboxSync(b.mailboxes)
        await runner.start()
        try:
            await until(lambda: _has(b, "Moving"))
            (m,), _ = await b.mailboxes.messages(b.grant, MessageFilter(subject="Moving"))
            archive = next(f for f in await b.mailboxes.folders(b.grant) if f.name == "Archive")
            # move just after a pass ends, so that IDLE (not a pass, 3 s away) sees it
            # leave INBOX first: the order this test is about. A pass that reaches
            # Archive before IDLE has told of INBOX's loss stores the message anew (a
            # known defect, closing note of 2026-12-03: what made this test flaky)
            passes = (await b.refresh()).synced_at
            await until(lambda: _passed(b, passes))
            other = b.server.client(b.user)
            other.select_folder("INBOX")
            other.move(other.search(["HEADER", "Message-ID", "<moving@example.net>"]), "Archive")
            other.logout()

            async def in_archive() -> bool:
                now = await b.mailboxes.message(b.grant, m.id)
                return now is not None and now.folder_id == archive.id

            # the next pass finds it within ~4 s here; the bound is for a loaded machine
            await until(in_archive, timeout=30.0)
            passes = (await b.refresh()).synced_at
            await until(lambda: _passed(b, passes))  # one more whole pass: nothing deleted
        finally:
            await runner.stop()
        assert [e.kind for e in await b.store.events(m.id)] == [EventKind.MAILBOX_UPDATED]


async def _passed(b: Box, since: float | None) -> bool:
    return (await b.refresh()).synced_at != since


async def test_server_gone_mid_sync_loses_nothing_and_resumes(
    own_dovecot: Dovecot, tmp_path: Path
) -> None:
    server = own_dovecot
    async with wired(server, f"sqlite:///{tmp_path / 'm.db'}", tmp_path) as b:
        count = 2000
        other = server.client(b.user)
        batch = [message(f"n{i}", message_id=f"<n{i}@example.net>") for i in range(count)]
        for i in range(0, count, 500):
            other.multiappend("INBOX", batch[i : i + 500])
        other.logout()

        syncing = asyncio.create_task(b.mailboxes.sync_now(b.grant))
        await until(lambda: _at_least(b, 1), timeout=30)  # a batch is committed
        server.kill()  # at once, with the rest of the mailbox not yet read
        with pytest.raises(MailboxUnreachable):
            await syncing
        stored = await total(b)
        assert 0 < stored < count
        before = await all_messages(b)

        server.start()  # on this thread: Dovecot dies with the thread that started it
        await b.mailboxes.sync_now(b.grant)
        after = await all_messages(b)
        assert sorted(after.values()) == sorted(f"n{i}" for i in range(count))  # each once
        assert before.items() <= after.items()  # what was stored kept its id


async def all_messages(b: Box) -> dict[str, str]:
    """id -> subject of every message, page by page."""
    out: dict[str, str] = {}
    token = None
    while True:
        page, token = await b.mailboxes.messages(
            b.grant, MessageFilter(limit=500, page_token=token)
        )
        out.update((m.id, m.subject) for m in page)
        if token is None:
            return out


async def _at_least(b: Box, n: int) -> bool:
    return await total(b) >= n


async def test_many_grants_within_the_connection_bound(dovecot: Dovecot, tmp_path: Path) -> None:
    """Six grants, max_connections 4: at most two sync passes and two IDLE watches open
    at once (connections counted as they are opened and closed)."""
    async with wired(
        dovecot, f"sqlite:///{tmp_path / 'm.db'}", tmp_path, max_connections=4
    ) as first:
        grants = [first.grant]
        for _ in range(5):
            user = a_user(dovecot)
            dovecot.append(user, message(f"for {user}"))
            grants.append(await add_grant(first.store, first.mailboxes.box, dovecot, user))
        service = first.mailboxes
        counted = count_connections(service)
        runner = MailboxSync(service)
        await runner.start()
        try:

            async def all_synced() -> bool:
                for g in grants:
                    now = await first.store.get_grant(g.id)
                    if now is None or now.synced_at is None:
                        return False
                return True

            await until(all_synced, timeout=20)
            assert 1 <= sum(not t.done() for t in runner.watches.values()) <= 2
        finally:
            await runner.stop()
        assert 2 <= counted.peak <= 4
        assert counted.now == 0  # every connection closed at stop
