"""What the sync of connected mailboxes keeps: folders with their sync state, messages,
thread keys; read and written once for both backends (statements in sql/mailbox.sql).

Every change of a mailbox message writes its outbox event (message.created / .updated /
.deleted) in the same transaction. A message gone from its folder is not deleted at once:
it is marked vanished, and deleted (with its event) only when a whole sync pass that
started after that has not found it elsewhere, so a message moved by another client
keeps its id (matched by Message-ID within the grant). The reads are in mailbox_reads.py."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from mailgate.mailboxes import threads
from mailgate.mailboxes.models import FolderState, MailboxMessage, Participant
from mailgate.models import EventKind, new_id
from mailgate.store.mailbox_reads import folders, message_from_row
from mailgate.store.protocols import Tx

_FIELDS = ("from", "to", "cc", "bcc", "reply_to")


@dataclass(frozen=True, slots=True)
class Owner:
    """The grant whose rows change, and the API key its events belong to."""

    grant_id: str
    api_key_id: str | None


@dataclass(frozen=True, slots=True)
class FolderChanges:
    """One step of a folder's sync, committed at once: new messages, flags changed,
    UIDs gone, and the folder's state after it (None: unchanged)."""

    folder_id: str
    new: Sequence[MailboxMessage] = ()
    flags: Sequence[tuple[str, bool, bool]] = ()  # (message id, unread, starred)
    vanished: Sequence[int] = ()  # UIDs
    state: FolderState | None = None
    announce: bool = True  # write message.created (not during a folder's first sync)
    vanish_all: bool = False  # UIDVALIDITY changed: every row of the folder is gone
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class Applied:
    created: int = 0
    moved: int = 0
    updated: int = 0
    vanished: int = 0
    created_ids: list[str] = field(default_factory=list)


# -- rows ------------------------------------------------------------------------------


def _addresses(ps: Sequence[Participant]) -> str:
    return " " + " ".join(p.email.lower() for p in ps) + " " if ps else ""


def _participants(m: MailboxMessage) -> str:
    groups = (m.from_, m.to, m.cc, m.bcc, m.reply_to)
    return json.dumps(
        {f: [[p.email, p.name] for p in g] for f, g in zip(_FIELDS, groups, strict=True)}
    )


async def _event(tx: Tx, owner: Owner, kind: EventKind, m: MailboxMessage, now: float) -> None:
    details = json.dumps(
        {"grant_id": owner.grant_id, "folder_id": m.folder_id, "thread_id": m.thread_id}
    )
    await tx.execute("insert_event", m.id, kind.value, now, details, owner.api_key_id)


# -- folders -----------------------------------------------------------------------------


async def put_folders(
    tx: Tx, grant_id: str, listed: Sequence[tuple[str, str | None]], now: float
) -> list[FolderState]:
    """The server's folder list: new ones added (roles refreshed), gone ones removed
    (their messages vanish: a renamed folder's turn up again in the new one)."""
    names = {name for name, _ in listed}
    for state in await folders(tx, grant_id):
        if state.name not in names:
            await tx.execute("vanish_mailbox_folder", now, state.id)
            await tx.execute("delete_mailbox_folder", state.id)
    for name, role in listed:
        await tx.execute("insert_mailbox_folder", new_id(now), grant_id, name, role)
    return await folders(tx, grant_id)


# -- the sync's changes ------------------------------------------------------------------


async def apply(tx: Tx, owner: Owner, c: FolderChanges) -> Applied:
    """One step of a folder's sync in one transaction, with its events."""
    now = c.now
    vanished = 0
    if c.vanish_all:
        await tx.execute("vanish_mailbox_folder", now, c.folder_id)
    for uid in c.vanished:
        await tx.execute("vanish_mailbox_uid", now, c.folder_id, uid)
        vanished += 1
    updated = 0
    for message_id, unread, starred in c.flags:
        await tx.execute("set_mailbox_flags", int(unread), int(starred), message_id)
        row = await tx.fetchrow("get_mailbox_message", message_id, owner.grant_id)
        if row is not None:
            await _event(tx, owner, EventKind.MAILBOX_UPDATED, message_from_row(row), now)
            updated += 1
    created: list[str] = []
    moved = 0
    for m in c.new:
        found = None
        if m.message_id_header:
            found = await tx.fetchrow(
                "mailbox_messages_by_header", owner.grant_id, m.message_id_header
            )
        if found is not None:  # moved here by another client (or by us): keeps its id
            await tx.execute(
                "move_mailbox_message", c.folder_id, m.uid, int(m.unread), int(m.starred), found[0]
            )
            row = await tx.fetchrow("get_mailbox_message", found[0], owner.grant_id)
            assert row is not None
            await _event(tx, owner, EventKind.MAILBOX_UPDATED, message_from_row(row), now)
            moved += 1
            continue
        m = replace(m, id=new_id(now), folder_id=c.folder_id)
        m = replace(m, thread_id=await _thread(tx, owner.grant_id, m, now))
        stored = await tx.fetchrow(
            "insert_mailbox_message",
            m.id,
            owner.grant_id,
            m.folder_id,
            m.uid,
            m.thread_id,
            m.message_id_header,
            m.in_reply_to,
            " ".join(m.references),
            m.subject,
            _participants(m),
            _addresses(m.from_),
            _addresses(m.to + m.cc + m.bcc),
            m.date,
            m.snippet,
            int(m.unread),
            int(m.starred),
            int(m.has_attachments),
            m.size,
        )
        if stored is None:  # stored meanwhile by another sync of this folder
            continue
        if c.announce:
            await _event(tx, owner, EventKind.MAILBOX_CREATED, m, now)
        created.append(m.id)
    if c.state is not None:
        s = c.state
        await tx.execute(
            "set_mailbox_folder_state", s.uidvalidity, s.uidnext, s.highestmodseq, now, s.id
        )
    return Applied(len(created), moved, updated, vanished, created)


async def _thread(tx: Tx, grant_id: str, m: MailboxMessage, now: float) -> str:
    """The message's thread (threads.py): its keys looked up, threads joined."""
    ks = threads.keys(m.message_id_header, m.in_reply_to, m.references)
    found: list[str] = []
    if ks:
        marks = ", ".join("?" for _ in ks)
        rows = await tx.query(
            f"SELECT thread_id FROM mailbox_thread_keys WHERE grant_id = ? AND key IN ({marks})",
            grant_id,
            *ks,
        )
        found = [str(r[0]) for r in rows]
    joined = threads.join(found, new_id(now))
    for old in joined.merged:
        await tx.execute("join_mailbox_thread_keys", joined.thread_id, old)
        await tx.execute("join_mailbox_thread_messages", joined.thread_id, old)
    for k in ks:
        await tx.execute("insert_mailbox_thread_key", grant_id, k, joined.thread_id)
    return joined.thread_id


async def finish_pass(tx: Tx, owner: Owner, started: float, now: float) -> int:
    """A whole pass ended: what vanished before it began and did not turn up elsewhere
    is deleted, with its event; the grant's synced_at moves."""
    gone = await tx.fetch("gone_mailbox_messages", owner.grant_id, started)
    for r in gone:
        await tx.execute("delete_mailbox_message", r[0])
        details = json.dumps(
            {"grant_id": owner.grant_id, "folder_id": str(r[1]), "thread_id": str(r[2])}
        )
        await tx.execute(
            "insert_event", r[0], EventKind.MAILBOX_DELETED.value, now, details, owner.api_key_id
        )
    await tx.execute("set_grant_synced", now, owner.grant_id)
    return len(gone)


async def claim_lease(tx: Tx, grant_id: str, owner: str, now: float, until: float) -> bool:
    """One process syncs a grant at a time: True when `owner` holds the lease to `until`."""
    return await tx.fetchrow("claim_mailbox_lease", grant_id, owner, until, now) is not None


async def release_lease(tx: Tx, grant_id: str, owner: str) -> None:
    await tx.execute("release_mailbox_lease", grant_id, owner)


# -- the API's changes (the IMAP change is made first, by the service) -----------------------


async def set_flags(
    tx: Tx, owner: Owner, message_id: str, unread: bool, starred: bool, now: float
) -> None:
    await tx.execute("set_mailbox_flags", int(unread), int(starred), message_id)
    row = await tx.fetchrow("get_mailbox_message", message_id, owner.grant_id)
    if row is not None:
        await _event(tx, owner, EventKind.MAILBOX_UPDATED, message_from_row(row), now)


async def move(tx: Tx, owner: Owner, message_id: str, folder_id: str, uid: int, now: float) -> None:
    """Moved by us: uid 0 when the server did not say the new UID (the folder's next
    sync matches it by Message-ID)."""
    row = await tx.fetchrow("get_mailbox_message", message_id, owner.grant_id)
    if row is None:
        return
    m = message_from_row(row)
    await tx.execute(
        "move_mailbox_message", folder_id, uid, int(m.unread), int(m.starred), message_id
    )
    await _event(tx, owner, EventKind.MAILBOX_UPDATED, replace(m, folder_id=folder_id), now)


async def delete(tx: Tx, owner: Owner, message_id: str, now: float) -> None:
    row = await tx.fetchrow("get_mailbox_message", message_id, owner.grant_id)
    if row is None:
        return
    await tx.execute("delete_mailbox_message", message_id)
    await _event(tx, owner, EventKind.MAILBOX_DELETED, message_from_row(row), now)
