"""The sync of one grant's mailbox over one IMAP connection: a pass over every folder, and
INBOX watched with IDLE between passes.

A folder's sync reads as its steps: select → compare (UIDVALIDITY) → look (new UIDs,
flags changed, UIDs gone) → record (the changes with their events, one transaction) →
fetch the new messages in batches, each batch committed with the UID it reached.

- New mail: UIDs from the stored UIDNEXT on (`UID SEARCH UID n:*`); a folder's first
  sync only reads the last `initial_sync_days` (SEARCH SINCE). Each batch commits the
  folder's UIDNEXT with its messages, so a connection lost mid-sync loses nothing and
  the next pass resumes after the last batch stored.
- Flags: CONDSTORE where offered (`FETCH 1:n (FLAGS) (CHANGEDSINCE modseq)`, nothing at
  all when HIGHESTMODSEQ did not move), else every stored message's flags again.
- Gone: with QRESYNC, the same FETCH names the UIDs expunged since (VANISHED (EARLIER)).
  Then, or without QRESYNC, when the server's count still differs from the stored
  messages plus the new ones, one `UID SEARCH` lists the UIDs left and the difference
  vanished.
- UIDVALIDITY changed: every stored message of the folder vanishes and the folder is
  read again; messages are matched by Message-ID, so they keep their ids.
- Moved by another client: it vanishes from one folder and turns up in another; the
  arrival is matched by Message-ID with the vanished row, which keeps its id. A vanished
  message is deleted only at the end of a whole pass that began after it vanished.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import imapclient

from mailgate.mailboxes import envelope
from mailgate.mailboxes.imap import (
    Connection,
    fetch_changes,
    fetch_range,
    idle_wait,
    list_folders,
)
from mailgate.mailboxes.models import FolderRole, FolderState, MailboxMessage
from mailgate.store import Store
from mailgate.store.mailbox import FolderChanges, Owner

BATCH = 250  # messages fetched and committed together (RFC822 of ~2 KB: ~0.5 MB a batch)
# What the sync keeps of a message (envelope, snippet, whether it has attachments) is near
# its start: at most this much of each is read, so a mailbox of large messages (or a
# server sending huge ones) costs bounded memory and time. Attachments are read from the
# server whole when asked for.
READ_AT_MOST = 2 * 1024 * 1024
FETCH = [b"UID", b"FLAGS", b"RFC822.SIZE", b"INTERNALDATE", b"BODY.PEEK[]<0.%d>" % READ_AT_MOST]
BODY_KEYS = (b"BODY[]<0>", b"BODY[]")  # a partial answer's name (a server may omit the <0>)
IDLE_RENEW = 25 * 60  # RFC 2177: re-issue IDLE before the server's 30-minute timeout


@dataclass
class Counts:
    created: int = 0
    moved: int = 0
    updated: int = 0
    vanished: int = 0
    deleted: int = 0

    def add(self, other: Counts) -> None:
        self.created += other.created
        self.moved += other.moved
        self.updated += other.updated
        self.vanished += other.vanished
        self.deleted += other.deleted


async def sync_pass(
    store: Store,
    owner: Owner,
    conn: Connection,
    window_days: float,
    clock: Callable[[], float] = time.time,
) -> Counts:
    """One pass over every folder (INBOX first), then the deletions it settles."""
    started = clock()
    listed = await conn.run(list_folders, conn.client)
    states = await store.put_mailbox_folders(
        owner.grant_id, [(f.name, f.role.value if f.role else None) for f in listed], started
    )
    order = {f.name: i for i, f in enumerate(listed)}
    counts = Counts()
    for state in sorted(states, key=lambda s: order.get(s.name, len(order))):
        counts.add(await sync_folder(store, owner, conn, state, window_days, clock))
    counts.deleted = await store.finish_mailbox_pass(owner, started, clock())
    return counts


# One sync of a folder at a time in this process (a pass and the IDLE watch of INBOX
# would otherwise both store the same new UIDs).
_LOCKS: dict[str, asyncio.Lock] = {}


async def sync_folder(
    store: Store,
    owner: Owner,
    conn: Connection,
    state: FolderState,
    window_days: float,
    clock: Callable[[], float] = time.time,
) -> Counts:
    async with _LOCKS.setdefault(state.id, asyncio.Lock()):
        fresh = next(
            (s for s in await store.mailbox_folders(owner.grant_id) if s.id == state.id), None
        )
        if fresh is None:
            return Counts()  # removed meanwhile
        return await _sync_folder(store, owner, conn, fresh, window_days, clock)


async def _sync_folder(
    store: Store,
    owner: Owner,
    conn: Connection,
    state: FolderState,
    window_days: float,
    clock: Callable[[], float],
) -> Counts:
    c = conn.client
    # select
    sel = await conn.run(c.select_folder, state.name, readonly=True)
    uidvalidity = int(sel.get(b"UIDVALIDITY", 0))
    server_uidnext = int(sel.get(b"UIDNEXT", 0))
    exists = int(sel.get(b"EXISTS", 0))
    modseq = int(sel.get(b"HIGHESTMODSEQ", 0)) if conn.condstore else 0
    # compare
    vanish_all = state.uidvalidity not in (0, uidvalidity)
    if vanish_all:
        state = replace(state, uidnext=0, highestmodseq=0)
    state = replace(state, uidvalidity=uidvalidity)
    first = state.uidnext == 0
    start = max(state.uidnext, 1)
    # look: new UIDs, flags changed, UIDs gone (the stored index is read only where
    # needed: an IDLE wake-up in a big INBOX reads a count and a few rows, not all)
    new_all = [u for u in await conn.run(c.search, ["UID", f"{start}:*"]) if u >= start]
    stored_below = 0 if vanish_all else await store.mailbox_folder_count(state.id, start)
    # UIDs at or past `start` already stored: moved here by us (MOVE told their UIDs)
    ours = {} if vanish_all or not new_all else await store.mailbox_folder_index(state.id, new_all)
    if first and window_days:
        since = datetime.date.fromtimestamp(clock() - window_days * 86400)
        wanted = set(await conn.run(c.search, ["UID", f"{start}:*", "SINCE", since]))
        new = [u for u in new_all if u in wanted and u not in ours]
    else:
        new = [u for u in new_all if u not in ours]
    flags: list[tuple[str, bool, bool]] = []
    gone: list[int] | None = None  # UIDs expunged, when QRESYNC said
    if stored_below and start > 1:
        if conn.condstore and state.highestmodseq and modseq:
            seen: dict[int, dict[bytes, Any]] = {}
            if modseq != state.highestmodseq:  # unchanged: no flag moved, nothing expunged
                seen, gone = await conn.run(
                    fetch_changes, c, start, state.highestmodseq, conn.qresync
                )
            else:
                gone = []
        else:
            seen = await conn.run(fetch_range, c, f"1:{start - 1}", [b"FLAGS"])
        known = await store.mailbox_folder_index(state.id, list(seen)) if seen else {}
        for uid, data in seen.items():
            if uid in known:
                unread, starred = _flags(data.get(b"FLAGS", ()))
                message_id, was_unread, was_starred = known[uid]
                if (unread, starred) != (was_unread, was_starred):
                    flags.append((message_id, unread, starred))
    vanished: list[int] = []
    if gone:
        vanished = list(await store.mailbox_folder_index(state.id, [u for u in gone if u < start]))
    if stored_below and stored_below - len(vanished) != exists - len(new_all):
        # not what QRESYNC said (or no QRESYNC): the UIDs left, listed
        left = set(await conn.run(c.search, ["UID", f"1:{max(start - 1, 1)}"]))
        below = await store.mailbox_folder_index(state.id)
        vanished = [u for u in below if u < start and u not in left]
    # record
    counts = Counts()
    if flags or vanished or vanish_all or first:
        done = await store.apply_mailbox_changes(
            owner,
            FolderChanges(
                state.id,
                flags=flags,
                vanished=vanished,
                vanish_all=vanish_all,
                state=state,
                now=clock(),
            ),
        )
        counts.updated, counts.vanished = done.updated, done.vanished
    # fetch the new ones, a batch at a time, each committed with the UID it reached
    for i in range(0, len(new), BATCH):
        chunk = new[i : i + BATCH]
        messages = await conn.run(_fetch, c, chunk, owner.grant_id, state.id)
        state = replace(state, uidnext=chunk[-1] + 1)
        done = await store.apply_mailbox_changes(
            owner,
            FolderChanges(state.id, new=messages, state=state, announce=not first, now=clock()),
        )
        counts.created += done.created
        counts.moved += done.moved
        counts.updated += done.updated
    # the folder is synced up to what the server said when it was selected
    final = replace(
        state,
        uidnext=max(server_uidnext, state.uidnext, (new_all[-1] + 1) if new_all else 0),
        highestmodseq=modseq,
    )
    if final != state or not new:
        await store.apply_mailbox_changes(owner, FolderChanges(state.id, state=final, now=clock()))
    return counts


def _flags(flags: tuple[bytes, ...]) -> tuple[bool, bool]:
    lowered = {f.lower() for f in flags}
    return b"\\seen" not in lowered, b"\\flagged" in lowered


def _fetch(
    c: imapclient.IMAPClient, uids: list[int], grant_id: str, folder_id: str
) -> list[MailboxMessage]:
    """FETCH and parse in the connection's thread (the parse is the costly part)."""
    out = []
    for uid, data in sorted(c.fetch(uids, FETCH).items()):
        raw = next((data[k] for k in BODY_KEYS if k in data), None)
        if not isinstance(raw, bytes):
            continue  # expunged meanwhile: the next pass sees it gone
        out.append(
            envelope.read(
                raw,
                grant_id=grant_id,
                folder_id=folder_id,
                uid=int(uid),
                flags=tuple(data.get(b"FLAGS", ())),
                size=int(data.get(b"RFC822.SIZE", 0)) or len(raw),
                received=envelope.received_time(data.get(b"INTERNALDATE")),
            )
        )
    return out


async def watch_inbox(
    store: Store,
    owner: Owner,
    conn: Connection,
    stop: asyncio.Event,
    window_days: float,
    clock: Callable[[], float] = time.time,
) -> None:
    """IDLE on INBOX until `stop`; each change the server reports syncs INBOX on this
    connection, then IDLE again. (A message moved out of INBOX is found in its new folder
    by the next pass, which is also what deletes it if it is found nowhere.)"""
    c = conn.client
    while not stop.is_set():
        inbox = next(
            (s for s in await store.mailbox_folders(owner.grant_id) if s.role is FolderRole.INBOX),
            None,
        )
        if inbox is None:
            return
        # INBOX stays selected after its sync: what arrives after that sync's last
        # command is told as soon as IDLE starts
        await sync_folder(store, owner, conn, inbox, window_days, clock)
        # a message that arrived during the sync's later commands was announced then,
        # and IDLE would not announce it again: sync once more before idling
        if conn.told_since_select():
            continue
        await conn.run(c.idle)
        began = time.monotonic()
        while not stop.is_set() and time.monotonic() - began < IDLE_RENEW:
            if await conn.run(idle_wait, c, 1.0):
                break
        await conn.run(c.idle_done)
