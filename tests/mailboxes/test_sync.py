"""The sync against a real Dovecot: what another client does to the mailbox shows up in
the store, with ids kept across moves, and the events the outbox publishes."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

from mailgate.events.payloads import Context, payload
from mailgate.mailboxes.models import FolderRole, MessageFilter
from mailgate.mailboxes.sync import FETCH, READ_AT_MOST
from mailgate.models import EventKind
from tests.mailboxes.conftest import Box, wired
from tests.mailboxes.dovecot import Dovecot, message


async def kinds(b: Box, message_id: str) -> list[EventKind]:
    return [e.kind for e in await b.store.events(message_id)]


async def test_initial_sync_reads_folders_messages_and_flags(any_box: Box) -> None:
    b = any_box
    b.server.append(b.user, message("First", body="Hello Alice, the first one."))
    b.server.append(
        b.user, message("Second", sender="Carol <carol@example.org>"), flags=("\\Seen",)
    )
    b.server.append(b.user, message("Filed"), folder="Archive", flags=("\\Flagged",))
    b.server.append(b.user, message("Mine", sender=b.user, to="bob@example.net"), folder="Sent")

    counts = await b.mailboxes.sync_now(b.grant)

    assert counts.created == 4
    folders = {f.name: f for f in await b.mailboxes.folders(b.grant)}
    assert {n: f.role for n, f in folders.items()} == {
        "INBOX": FolderRole.INBOX,
        "Sent": FolderRole.SENT,
        "Drafts": FolderRole.DRAFTS,
        "Trash": FolderRole.TRASH,
        "Archive": FolderRole.ARCHIVE,
        "Junk": FolderRole.JUNK,
    }
    assert (folders["INBOX"].total, folders["INBOX"].unread) == (2, 1)
    inbox, _ = await b.mailboxes.messages(b.grant, MessageFilter(in_folder="inbox"))
    assert sorted(m.subject for m in inbox) == ["First", "Second"]
    first = next(m for m in inbox if m.subject == "First")
    assert first.snippet == "Hello Alice, the first one."
    assert first.unread and not first.starred
    assert first.from_[0].email == "bob@example.net" and first.from_[0].name == "Bob"
    unread, _ = await b.mailboxes.messages(b.grant, MessageFilter(unread=False))
    assert [m.subject for m in unread] == ["Second"]
    starred, _ = await b.mailboxes.messages(b.grant, MessageFilter(starred=True))
    assert [m.subject for m in starred] == ["Filed"]
    from_carol, _ = await b.mailboxes.messages(b.grant, MessageFilter(from_="CAROL@example.org"))
    assert [m.subject for m in from_carol] == ["Second"]
    to_bob, _ = await b.mailboxes.messages(b.grant, MessageFilter(any_email=("bob@example.net",)))
    assert {m.subject for m in to_bob} == {"First", "Filed", "Mine"}  # From or To
    # the first sync of a folder announces nothing; a pass with nothing new changes nothing
    assert await kinds(b, first.id) == []
    again = await b.mailboxes.sync_now(b.grant)
    assert (again.created, again.updated, again.vanished, again.deleted) == (0, 0, 0, 0)
    grant = await b.refresh()
    assert grant.synced_at is not None


async def test_pages_walk_every_message_once(box: Box) -> None:
    for i in range(7):
        box.server.append(box.user, message(f"m{i}", date=f"Tue, 01 Dec 2026 10:0{i}:00 +0000"))
    await box.mailboxes.sync_now(box.grant)
    seen, token = [], None
    while True:
        page, token = await box.mailboxes.messages(
            box.grant, MessageFilter(limit=3, page_token=token)
        )
        seen += [m.subject for m in page]
        if token is None:
            break
    assert seen == [f"m{i}" for i in reversed(range(7))]


async def test_changes_by_another_client_reach_the_store(box: Box) -> None:
    b = box
    b.server.append(b.user, message("Flag me", message_id="<flag@example.net>"))
    b.server.append(b.user, message("Move me", message_id="<move@example.net>"))
    b.server.append(b.user, message("Delete me", message_id="<del@example.net>"))
    await b.mailboxes.sync_now(b.grant)
    by_subject = {m.subject: m for m in (await b.mailboxes.messages(b.grant, MessageFilter()))[0]}

    other = b.server.client(b.user)
    other.select_folder("INBOX")
    uids = {
        d[b"ENVELOPE"].subject.decode(): uid
        for uid, d in other.fetch(other.search("ALL"), ["ENVELOPE"]).items()
    }
    other.add_flags([uids["Flag me"]], [b"\\Seen", b"\\Flagged"])
    other.move([uids["Move me"]], "Archive")
    other.delete_messages([uids["Delete me"]])
    other.expunge()
    other.logout()

    # a move shows as gone here and new there: both in one pass
    counts = await b.mailboxes.sync_now(b.grant)
    assert (counts.updated, counts.moved) == (1, 1)
    flagged = await b.mailboxes.message(b.grant, by_subject["Flag me"].id)
    assert flagged is not None and not flagged.unread and flagged.starred
    moved = await b.mailboxes.message(b.grant, by_subject["Move me"].id)
    archive = next(f for f in await b.mailboxes.folders(b.grant) if f.name == "Archive")
    assert moved is not None and moved.folder_id == archive.id  # the same id, in Archive
    # the deleted one waits one more whole pass (it might turn up in another folder)
    await b.mailboxes.sync_now(b.grant)
    assert await b.mailboxes.message(b.grant, by_subject["Delete me"].id) is None
    assert await kinds(b, by_subject["Flag me"].id) == [EventKind.MAILBOX_UPDATED]
    assert await kinds(b, by_subject["Move me"].id) == [EventKind.MAILBOX_UPDATED]
    assert await kinds(b, by_subject["Delete me"].id) == [EventKind.MAILBOX_DELETED]
    assert (await b.mailboxes.messages(b.grant, MessageFilter()))[0].__len__() == 2


async def test_new_mail_after_the_first_sync_is_announced(box: Box) -> None:
    await box.mailboxes.sync_now(box.grant)
    box.server.append(box.user, message("Late"))
    counts = await box.mailboxes.sync_now(box.grant)
    assert counts.created == 1
    (late,), _ = await box.mailboxes.messages(box.grant, MessageFilter(subject="Late"))
    (event,) = await box.store.events(late.id)
    assert event.kind is EventKind.MAILBOX_CREATED and event.api_key_id == "key1"
    published = payload(event, Context())
    assert published is not None and published["type"] == "message.created"
    assert published["data"] == {
        "message_id": late.id,
        "grant_id": box.grant.id,
        "folder_id": late.folder_id,
        "thread_id": late.thread_id,
    }


async def test_uidvalidity_reset_resyncs_the_folder_and_keeps_ids(box: Box) -> None:
    b = box
    for i in range(3):
        b.server.append(b.user, message(f"r{i}", message_id=f"<r{i}@example.net>"), folder="Junk")
    await b.mailboxes.sync_now(b.grant)
    before = {m.subject: m.id for m in (await b.mailboxes.messages(b.grant, MessageFilter()))[0]}

    # the folder is made anew by another client: new UIDVALIDITY, UIDs from 1 again
    other = b.server.client(b.user)
    other.select_folder("Junk")
    raws = [
        d[b"BODY[]"] for _, d in sorted(other.fetch(other.search("ALL"), ["BODY.PEEK[]"]).items())
    ]
    other.unselect_folder()
    other.delete_folder("Junk")
    other.create_folder("Junk")
    for raw in raws[:2]:  # one of the three is gone for good
        other.append("Junk", raw)
    other.logout()
    folder_before = next(f for f in await b.store.mailbox_folders(b.grant.id) if f.name == "Junk")

    await b.mailboxes.sync_now(b.grant)
    await b.mailboxes.sync_now(b.grant)

    folder_after = next(f for f in await b.store.mailbox_folders(b.grant.id) if f.name == "Junk")
    assert folder_after.uidvalidity != folder_before.uidvalidity
    after = {m.subject: m.id for m in (await b.mailboxes.messages(b.grant, MessageFilter()))[0]}
    assert after == {"r0": before["r0"], "r1": before["r1"]}


async def test_initial_sync_window_leaves_old_mail_out(box: Box) -> None:
    old = time.time() - 200 * 86400
    other = box.server.client(box.user)
    other.append(
        "INBOX",
        message("Ancient"),
        msg_time=datetime.datetime.fromtimestamp(old, datetime.UTC),
    )
    other.logout()
    box.server.append(box.user, message("Recent"))
    await box.mailboxes.sync_now(box.grant)
    got, _ = await box.mailboxes.messages(box.grant, MessageFilter())
    assert [m.subject for m in got] == ["Recent"]


async def test_a_plain_server_is_synced_without_its_extensions(
    plain_dovecot: Dovecot, tmp_path: Path
) -> None:
    """No CONDSTORE (flags read again), no QRESYNC (UIDs listed), no MOVE (COPY and
    EXPUNGE), no IDLE: the same results."""
    async with wired(plain_dovecot, f"sqlite:///{tmp_path / 'm.db'}", tmp_path) as b:
        conn = await b.mailboxes.open(b.grant)
        assert (conn.condstore, conn.qresync, conn.idle, conn.move) == (False,) * 4
        await conn.close()
        for name in ("Flag me", "Move me", "Delete me", "Ours"):
            b.server.append(b.user, message(name, message_id=f"<{name[:4]}@example.net>"))
        await b.mailboxes.sync_now(b.grant)
        ids = {m.subject: m.id for m in (await b.mailboxes.messages(b.grant, MessageFilter()))[0]}
        other = b.server.client(b.user)
        other.select_folder("INBOX")
        uids = {
            d[b"ENVELOPE"].subject.decode(): uid
            for uid, d in other.fetch(other.search("ALL"), ["ENVELOPE"]).items()
        }
        other.add_flags([uids["Flag me"]], [b"\\Flagged"])
        other.copy([uids["Move me"]], "Archive")
        other.delete_messages([uids["Move me"], uids["Delete me"]])
        other.expunge()
        other.logout()
        await b.mailboxes.sync_now(b.grant)
        await b.mailboxes.sync_now(b.grant)
        archive = next(f for f in await b.mailboxes.folders(b.grant) if f.name == "Archive")
        flagged = await b.mailboxes.message(b.grant, ids["Flag me"])
        moved = await b.mailboxes.message(b.grant, ids["Move me"])
        assert flagged is not None and flagged.starred
        assert moved is not None and moved.folder_id == archive.id
        assert await b.mailboxes.message(b.grant, ids["Delete me"]) is None
        ours = await b.mailboxes.update(b.grant, ids["Ours"], folder_ids=[archive.id])
        assert ours.folder_id == archive.id and ours.uid > 0  # COPY's COPYUID
        counts = await b.mailboxes.sync_now(b.grant)
        assert (counts.created, counts.deleted) == (0, 0)


async def test_a_large_message_is_read_from_its_start_only(any_box: Box) -> None:
    """The sync reads at most READ_AT_MOST of a message: its envelope, snippet and first
    attachment's headers are there; the size is the server's, of the whole."""
    b = any_box
    boundary = "b0undary"
    blob = ("QUJD" * 19 + "\r\n") * (3 * READ_AT_MOST // 78)  # base64 lines, 1.5x the bound
    raw = (
        "From: Bob <bob@example.net>\r\nTo: alice@example.test\r\nSubject: Big one\r\n"
        "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <big@example.net>\r\n"
        f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nThe photos, as promised.\r\n"
        f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        'Content-Disposition: attachment; filename="photos.zip"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{blob}--{boundary}--\r\n"
    ).encode()
    assert len(raw) > READ_AT_MOST
    b.server.append(b.user, raw)
    await b.mailboxes.sync_now(b.grant)
    (m,), _ = await b.mailboxes.messages(b.grant, MessageFilter(subject="Big one"))
    assert m.snippet == "The photos, as promised."
    assert m.has_attachments and m.message_id_header == "<big@example.net>"
    assert m.size == len(raw)
    async with b.mailboxes.connection(b.grant) as conn:  # what the sync's FETCH reads
        await conn.run(conn.client.select_folder, "INBOX", readonly=True)
        got = await conn.run(conn.client.fetch, [m.uid], FETCH)
    (body,) = (v for k, v in got[m.uid].items() if k.startswith(b"BODY[]"))
    assert len(body) == READ_AT_MOST
