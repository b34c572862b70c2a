"""Connected mailboxes' rows on every backend (store/mailbox.py): a folder's changes with
their events, threads joined, vanished rows settled by a pass, sync leases, and a grant's
rows gone with it."""

from __future__ import annotations

from dataclasses import replace

from mailgate.mailboxes.models import FolderRole, MailboxMessage, MessageFilter, Participant
from mailgate.models import EventKind
from mailgate.store.mailbox import FolderChanges, Owner
from mailgate.store.protocols import Store
from tests.store.test_grants import a_grant


def mail(uid: int, mid: str, refs: tuple[str, ...] = (), subject: str = "s") -> MailboxMessage:
    return MailboxMessage(
        id="",
        grant_id="",
        thread_id="",
        folder_id="",
        uid=uid,
        message_id_header=mid,
        in_reply_to="",
        references=refs,
        subject=subject,
        from_=(Participant("Bob@Example.net", "Bob"),),
        to=(Participant("ann@example.com"),),
        cc=(),
        bcc=(),
        reply_to=(),
        date=1000.0 + uid,
        snippet="hi",
        unread=True,
        starred=False,
        has_attachments=False,
        size=100,
    )


async def test_a_folders_changes_events_threads_and_leases(store: Store) -> None:
    grant = a_grant("k1")
    await store.add_grant(grant, "sealed")
    owner = Owner(grant.id, "k1")
    inbox, sent = await store.put_mailbox_folders(
        grant.id, [("INBOX", "inbox"), ("Sent", "sent")], 1.0
    )
    assert (inbox.role, sent.role) == (FolderRole.INBOX, FolderRole.SENT)
    first = await store.apply_mailbox_changes(
        owner,
        FolderChanges(
            inbox.id,
            new=[mail(1, "<a@x>"), mail(2, "<b@x>", ("<root@x>",))],
            state=replace(inbox, uidvalidity=7, uidnext=3),
            now=10.0,
        ),
    )
    assert first.created == 2
    again = await store.apply_mailbox_changes(  # the same UIDs again: nothing twice
        owner, FolderChanges(inbox.id, new=[mail(1, "<a@x>")], now=11.0)
    )
    assert again.created == 0
    reply = await store.apply_mailbox_changes(
        owner, FolderChanges(sent.id, new=[mail(1, "<c@x>", ("<a@x>", "<root@x>"))], now=12.0)
    )
    listed, _ = await store.mailbox_messages(grant.id, MessageFilter(), None, None)
    assert len({m.thread_id for m in listed}) == 1  # joined through <a@x> and <root@x>
    from_bob, _ = await store.mailbox_messages(
        grant.id, MessageFilter(from_="bob@example.net"), None, None
    )
    assert len(from_bob) == 3
    index = await store.mailbox_folder_index(inbox.id)
    (a_id, *_), (b_id, *_) = index[1], index[2]
    await store.apply_mailbox_changes(
        owner, FolderChanges(inbox.id, flags=[(a_id, False, True)], vanished=[2], now=13.0)
    )
    assert (await store.mailbox_message(grant.id, b_id)) is None  # vanished: hidden
    assert await store.finish_mailbox_pass(owner, 13.0, 14.0) == 0  # vanished during it
    assert await store.finish_mailbox_pass(owner, 15.0, 16.0) == 1
    created, updated, deleted = (
        EventKind.MAILBOX_CREATED,
        EventKind.MAILBOX_UPDATED,
        EventKind.MAILBOX_DELETED,
    )
    assert [e.kind for e in await store.events(a_id)] == [created, updated]
    assert [e.kind for e in await store.events(b_id)] == [created, deleted]
    assert [e.kind for e in await store.events(reply.created_ids[0])] == [EventKind.MAILBOX_CREATED]

    assert await store.claim_mailbox_lease(grant.id, "p1", 100.0, 200.0)
    assert not await store.claim_mailbox_lease(grant.id, "p2", 150.0, 250.0)
    assert await store.claim_mailbox_lease(grant.id, "p1", 150.0, 250.0)  # renewed
    assert await store.claim_mailbox_lease(grant.id, "p2", 251.0, 350.0)  # run out
    await store.release_mailbox_lease(grant.id, "p2")
    assert await store.claim_mailbox_lease(grant.id, "p3", 252.0, 350.0)

    assert await store.delete_grant(grant.id)
    assert await store.mailbox_folders(grant.id) == []
    assert await store.mailbox_message(grant.id, a_id) is None
