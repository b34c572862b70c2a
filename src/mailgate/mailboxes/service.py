"""Mailboxes: what the API asks of a connected mailbox (one object per process, built in
app.py with the store, the SecretBox and config). Reads come from the store, which the
sync keeps; a change (flags, folder, delete, append) is made over IMAP first, then in the
store with its event, so the store never says what the mailbox does not.

Connections: sync passes and IDLE share `mailboxes.max_connections` (half of it at most
for IDLE); an API call opens its own short connection, not queued behind a long sync, at
most API_CONNECTIONS_PER_GRANT of them at once for one mailbox in a process (the rest
wait): a burst of API calls must not open a connection each to the user's server, which
counts them (Dovecot allows 10 per user and address by default) and may lock it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from mailgate.config import MailboxesConfig
from mailgate.errors import (
    MailboxAuthRefused,
    MailboxError,
    MailboxUnreachable,
    NotFound,
    RequestError,
)
from mailgate.mailboxes import grants, sync
from mailgate.mailboxes.imap import Connection, connect, list_folders
from mailgate.mailboxes.models import (
    Credentials,
    Folder,
    FolderRole,
    FolderState,
    Grant,
    GrantStatus,
    MailboxMessage,
    MessageFilter,
    Thread,
    ThreadFilter,
)
from mailgate.reachable import Network
from mailgate.secretbox import SecretBox
from mailgate.store import Store
from mailgate.store.mailbox import Owner
from mailgate.store.mailbox_reads import untoken

__all__ = ["Mailboxes", "MessageFilter", "ThreadFilter"]

API_CONNECTIONS_PER_GRANT = 3


class Mailboxes:
    def __init__(
        self,
        store: Store,
        box: SecretBox,
        cfg: MailboxesConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.box, self.cfg, self.clock = store, box, cfg, clock
        self.tls = ssl.create_default_context()
        if cfg.tls_ca_file:
            self.tls.load_verify_locations(cfg.tls_ca_file)
        self.allowed: list[Network] = [
            ipaddress.ip_network(n, strict=False) for n in cfg.allow_private_networks
        ]
        self.idle_max = cfg.max_connections // 2
        self.slots = asyncio.Semaphore(cfg.max_connections - self.idle_max)
        # one thread per open connection at most: IDLE waits hold theirs
        self.pool = ThreadPoolExecutor(cfg.max_connections + 8, "imap")
        self.api_slots: dict[str, asyncio.Semaphore] = {}  # grant id -> its API connections

    # -- connections -------------------------------------------------------------------
    async def credentials(self, grant: Grant) -> Credentials:
        sealed = await self.store.grant_credentials(grant.id)
        if sealed is None:
            raise NotFound(f"no grant {grant.id}")
        return grants.unseal(self.box, sealed)

    async def open(self, grant: Grant, creds: Credentials | None = None) -> Connection:
        creds = creds or await self.credentials(grant)
        conn = await connect(grant.imap, grant.username, creds, self.tls, self.allowed)
        conn.executor = self.pool
        return conn

    @contextlib.asynccontextmanager
    async def connection(self, grant: Grant) -> AsyncIterator[Connection]:
        """A connection for one API call; refused credentials mark the grant invalid."""
        try:
            conn = await self.open(grant)
        except MailboxAuthRefused as exc:
            await self.store.set_grant_status(grant.id, GrantStatus.INVALID, str(exc))
            raise
        try:
            yield conn
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def api_connection(self, grant: Grant) -> AsyncIterator[Connection]:
        """A connection for one API call, when one of the grant's API slots is free."""
        slots = self.api_slots.setdefault(grant.id, asyncio.Semaphore(API_CONNECTIONS_PER_GRANT))
        async with slots, self.connection(grant) as conn:
            yield conn

    async def check(self, grant: Grant, creds: Credentials) -> str | None:
        """Log in and list folders: None when fine, else one sentence saying why not."""
        try:
            conn = await self.open(grant, creds)
        except MailboxError as exc:
            return str(exc)
        try:
            await conn.run(list_folders, conn.client)
        except MailboxError as exc:
            return str(exc)
        finally:
            await conn.close()
        return None

    # -- sync ------------------------------------------------------------------------------
    async def sync_now(self, grant: Grant) -> sync.Counts:
        """One full pass now (bounded by max_connections); refused credentials mark the
        grant invalid (and raise MailboxAuthRefused)."""
        async with self.slots, self.connection(grant) as conn:
            return await sync.sync_pass(
                self.store, _owner(grant), conn, self.cfg.initial_sync_days, self.clock
            )

    # -- reads ----------------------------------------------------------------------------
    async def folders(self, grant: Grant) -> list[Folder]:
        return await self.store.mailbox_folder_list(grant.id)

    async def messages(
        self, grant: Grant, f: MessageFilter
    ) -> tuple[list[MailboxMessage], str | None]:
        folder_id = await self._folder_id(grant, f.in_folder)
        if folder_id is None:
            return [], None
        return await self.store.mailbox_messages(
            grant.id, f, folder_id or None, _after(f.page_token)
        )

    async def _folder_id(self, grant: Grant, wanted: str | None) -> str | None:
        """The id of the folder a list is limited to: "" for every folder, None when the
        folder named does not exist (an empty list)."""
        if wanted is None:
            return ""
        folder = await self._folder(grant, wanted)
        return None if folder is None else folder.id

    async def message(self, grant: Grant, message_id: str) -> MailboxMessage | None:
        return await self.store.mailbox_message(grant.id, message_id)

    async def threads(self, grant: Grant, f: ThreadFilter) -> tuple[list[Thread], str | None]:
        folder_id = await self._folder_id(grant, f.in_folder)
        if folder_id is None:
            return [], None
        return await self.store.mailbox_threads(
            grant.id, f, folder_id or None, _after(f.page_token)
        )

    async def thread(self, grant: Grant, thread_id: str) -> Thread | None:
        return await self.store.mailbox_thread(grant.id, thread_id)

    async def raw(self, grant: Grant, message_id: str) -> bytes | None:
        """The message's RFC 5322 bytes, fetched from its folder."""
        m = await self.message(grant, message_id)
        if m is None:
            return None
        folder = await self._folder(grant, m.folder_id)
        if folder is None:
            return None
        async with self.api_connection(grant) as conn:
            await conn.run(conn.client.select_folder, folder.name, readonly=True)
            uid = m.uid or await self._find(conn, m)
            if not uid:
                return None
            got = await conn.run(conn.client.fetch, [uid], [b"BODY.PEEK[]"])
        raw = got.get(uid, {}).get(b"BODY[]")
        return raw if isinstance(raw, bytes) else None

    # -- changes: IMAP first, then the store ----------------------------------------------
    async def update(
        self,
        grant: Grant,
        message_id: str,
        *,
        unread: bool | None = None,
        starred: bool | None = None,
        folder_ids: list[str] | None = None,
    ) -> MailboxMessage:
        m = await self._must(grant, message_id)
        source = await self._must_folder(grant, m.folder_id)
        target = None
        if folder_ids:
            target = await self._must_folder(grant, folder_ids[0])
            if target.id == source.id:
                target = None
        owner = _owner(grant)
        async with self.api_connection(grant) as conn:
            c = conn.client
            await conn.run(c.select_folder, source.name)
            uid = m.uid or await self._find(conn, m)
            if not uid:
                raise NotFound(f"message {message_id} is no longer in {source.name}")
            if unread is not None:
                change = c.remove_flags if unread else c.add_flags
                await conn.run(change, [uid], [b"\\Seen"])
            if starred is not None:
                change = c.add_flags if starred else c.remove_flags
                await conn.run(change, [uid], [b"\\Flagged"])
            if unread is not None or starred is not None:
                await self.store.set_mailbox_flags(
                    owner,
                    m.id,
                    m.unread if unread is None else unread,
                    m.starred if starred is None else starred,
                    self.clock(),
                )
            if target is not None:
                new_uid = await self._move(conn, uid, target.name)
                await self.store.move_mailbox_message(owner, m.id, target.id, new_uid, self.clock())
        return await self._must(grant, message_id)

    async def delete(self, grant: Grant, message_id: str) -> None:
        """To the Trash folder; from Trash (or with no Trash), expunged."""
        m = await self._must(grant, message_id)
        source = await self._must_folder(grant, m.folder_id)
        trash = await self._folder(grant, FolderRole.TRASH.value)
        owner = _owner(grant)
        async with self.api_connection(grant) as conn:
            c = conn.client
            await conn.run(c.select_folder, source.name)
            uid = m.uid or await self._find(conn, m)
            if trash is not None and trash.id != source.id:
                if uid:
                    new_uid = await self._move(conn, uid, trash.name)
                    await self.store.move_mailbox_message(
                        owner, m.id, trash.id, new_uid, self.clock()
                    )
                return
            if uid:
                await conn.run(c.add_flags, [uid], [b"\\Deleted"])
                await conn.run(c.uid_expunge, [uid])
            await self.store.delete_mailbox_message(owner, m.id, self.clock())

    async def append(
        self, grant: Grant, role: FolderRole, raw: bytes, flags: tuple[str, ...] = ()
    ) -> None:
        """APPEND to the folder of that role (Sent, Drafts), then sync that folder so the
        message is readable (and threaded) when this returns."""
        folder = await self._folder(grant, role.value)
        async with self.api_connection(grant) as conn:
            if folder is None:  # not synced yet: learn the folders first
                listed = await conn.run(list_folders, conn.client)
                await self.store.put_mailbox_folders(
                    grant.id,
                    [(f.name, f.role.value if f.role else None) for f in listed],
                    self.clock(),
                )
                folder = await self._folder(grant, role.value)
            if folder is None:
                raise MailboxUnreachable(f"the mailbox has no {role.value} folder")
            await conn.run(conn.client.append, folder.name, raw, flags)
            await sync.sync_folder(
                self.store,
                _owner(grant),
                conn,
                folder,
                self.cfg.initial_sync_days,
                self.clock,
            )

    # -- helpers ----------------------------------------------------------------------------
    async def _folder(self, grant: Grant, ref: str) -> FolderState | None:
        """A folder by id, role or name (case-insensitive for roles and INBOX)."""
        states = await self.store.mailbox_folders(grant.id)
        for s in states:
            if s.id == ref:
                return s
        for s in states:
            if s.role is not None and s.role.value == ref.lower():
                return s
        for s in states:
            if s.name == ref or (s.name.upper() == "INBOX" and ref.upper() == "INBOX"):
                return s
        return None

    async def _must(self, grant: Grant, message_id: str) -> MailboxMessage:
        m = await self.message(grant, message_id)
        if m is None:
            raise NotFound(f"no message {message_id}")
        return m

    async def _must_folder(self, grant: Grant, ref: str) -> FolderState:
        folder = await self._folder(grant, ref)
        if folder is None:
            raise NotFound(f"no folder {ref}")
        return folder

    async def _find(self, conn: Connection, m: MailboxMessage) -> int:
        """The UID of a message moved by us (its UID not known yet), by Message-ID."""
        if not m.message_id_header:
            return 0
        uids = await conn.run(conn.client.search, ["HEADER", "Message-ID", m.message_id_header])
        return int(uids[-1]) if uids else 0

    async def _move(self, conn: Connection, uid: int, target: str) -> int:
        """MOVE (or COPY, \\Deleted, UID EXPUNGE); the new UID from COPYUID (UIDPLUS),
        else 0 (the folder's next sync finds it by Message-ID)."""
        c = conn.client
        codes = c._imap.untagged_responses  # imaplib files [COPYUID ...] here, by name
        codes.pop("COPYUID", None)  # from earlier commands
        if conn.move:
            await conn.run(c.move, [uid], target)
        else:
            await conn.run(c.copy, [uid], target)
            await conn.run(c.add_flags, [uid], [b"\\Deleted"])
            await conn.run(c.uid_expunge, [uid])
        told = codes.pop("COPYUID", [])
        if not told:
            return 0
        line = told[-1].decode() if isinstance(told[-1], bytes) else str(told[-1])
        parts = line.split()  # uidvalidity, source UIDs, new UIDs
        return int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else 0

    async def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _owner(grant: Grant) -> Owner:
    return Owner(grant.id, grant.api_key_id)


def _after(page_token: str | None) -> tuple[float, str] | None:
    if not page_token:
        return None
    after = untoken(page_token)
    if after is None:
        raise RequestError(
            "invalid_field", "the page token is not one this server gave", "page_token"
        )
    return after
