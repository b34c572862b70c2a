"""What the API asks of a mailbox, against a real Dovecot: changes reach the server
first, then the store; raw bytes come from the server; a connection check names what
is wrong in one sentence."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mailgate.errors import MailboxAuthRefused
from mailgate.mailboxes.grants import seal
from mailgate.mailboxes.models import (
    AuthMethod,
    Credentials,
    FolderRole,
    GrantStatus,
    MessageFilter,
    Server,
    TlsMode,
)
from mailgate.mailboxes.service import API_CONNECTIONS_PER_GRANT
from mailgate.models import EventKind
from tests.mailboxes.conftest import Box, count_connections, wired
from tests.mailboxes.dovecot import Dovecot, free_port, message


def server_flags(b: Box, folder: str, message_id: str) -> set[bytes] | None:
    other = b.server.client(b.user)
    try:
        other.select_folder(folder, readonly=True)
        uids = other.search(["HEADER", "Message-ID", message_id])
        if not uids:
            return None
        return set(other.get_flags(uids)[uids[0]]) - {b"\\Recent"}
    finally:
        other.logout()


async def test_update_and_delete_reach_the_server(any_box: Box) -> None:
    b = any_box
    b.server.append(b.user, message("Keep", message_id="<keep@example.net>"))
    await b.mailboxes.sync_now(b.grant)
    (m,), _ = await b.mailboxes.messages(b.grant, MessageFilter())

    read = await b.mailboxes.update(b.grant, m.id, unread=False, starred=True)
    assert not read.unread and read.starred
    assert server_flags(b, "INBOX", "<keep@example.net>") == {b"\\Seen", b"\\Flagged"}

    archive = next(f for f in await b.mailboxes.folders(b.grant) if f.role is FolderRole.ARCHIVE)
    moved = await b.mailboxes.update(b.grant, m.id, folder_ids=[archive.id])
    assert moved.id == m.id and moved.folder_id == archive.id
    assert moved.uid > 0  # told by MOVE's COPYUID (UIDPLUS)
    assert server_flags(b, "INBOX", "<keep@example.net>") is None
    assert server_flags(b, "Archive", "<keep@example.net>") == {b"\\Seen", b"\\Flagged"}
    # the sync agrees: nothing new, the same message in Archive
    counts = await b.mailboxes.sync_now(b.grant)
    assert (counts.created, counts.deleted) == (0, 0)
    assert (await b.mailboxes.message(b.grant, m.id)).folder_id == archive.id  # type: ignore[union-attr]
    raw = await b.mailboxes.raw(b.grant, m.id)
    assert raw is not None and b"Subject: Keep" in raw

    await b.mailboxes.delete(b.grant, m.id)  # to Trash
    trashed = await b.mailboxes.message(b.grant, m.id)
    assert trashed is not None and trashed.folder_id != archive.id
    assert server_flags(b, "Trash", "<keep@example.net>") is not None
    await b.mailboxes.delete(b.grant, m.id)  # from Trash: gone
    assert await b.mailboxes.message(b.grant, m.id) is None
    assert server_flags(b, "Trash", "<keep@example.net>") is None
    await b.mailboxes.sync_now(b.grant)
    await b.mailboxes.sync_now(b.grant)
    assert (await b.mailboxes.messages(b.grant, MessageFilter()))[0] == []
    kinds = [e.kind for e in await b.store.events(m.id)]
    assert kinds == [EventKind.MAILBOX_UPDATED] * 3 + [EventKind.MAILBOX_DELETED]


async def test_append_to_sent_is_readable_at_once(box: Box) -> None:
    raw = message("Sent by us", message_id="<out@example.test>", sender=box.user)
    await box.mailboxes.append(box.grant, FolderRole.SENT, raw, ("\\Seen",))
    (m,), _ = await box.mailboxes.messages(box.grant, MessageFilter(in_folder="sent"))
    assert m.subject == "Sent by us" and not m.unread
    assert server_flags(box, "Sent", "<out@example.test>") == {b"\\Seen"}


async def test_refused_credentials_mark_the_grant_invalid(
    own_dovecot: Dovecot, tmp_path: Path
) -> None:
    # a Dovecot of its own: a failed login slows the next ones from that address (anvil)
    async with wired(own_dovecot, f"sqlite:///{tmp_path / 'm.db'}", tmp_path) as b:
        await _refused(b)


async def _refused(b: Box) -> None:
    await b.store.update_grant(
        b.grant, seal(b.mailboxes.box, Credentials(AuthMethod.PASSWORD, "wrong"))
    )
    with pytest.raises(MailboxAuthRefused):
        await b.mailboxes.sync_now(b.grant)
    grant = await b.refresh()
    assert grant.status is GrantStatus.INVALID
    assert grant.error is not None and "refused" in grant.error and "wrong" not in grant.error


async def test_check_says_what_is_wrong(own_dovecot: Dovecot, tmp_path: Path) -> None:
    dovecot = own_dovecot
    async with wired(dovecot, f"sqlite:///{tmp_path / 'm.db'}", tmp_path) as b:
        good = Credentials(AuthMethod.PASSWORD, dovecot.users[b.user])
        assert await b.mailboxes.check(b.grant, good) is None
        implicit = replace(b.grant, imap=Server(dovecot.host, dovecot.imaps_port, TlsMode.IMPLICIT))
        assert await b.mailboxes.check(implicit, good) is None  # the test CA is trusted
        starttls = replace(b.grant, imap=Server(dovecot.host, dovecot.imap_port, TlsMode.STARTTLS))
        assert await b.mailboxes.check(starttls, good) is None
        tls_on_plain = replace(
            b.grant, imap=Server(dovecot.host, dovecot.imap_port, TlsMode.IMPLICIT)
        )
        said = await b.mailboxes.check(tls_on_plain, good)
        assert said is not None and "TLS" in said
        closed = replace(b.grant, imap=Server(dovecot.host, free_port(), TlsMode.NONE))
        said = await b.mailboxes.check(closed, good)
        assert said is not None and "unreachable" in said
        bad = await b.mailboxes.check(b.grant, Credentials(AuthMethod.PASSWORD, "nope"))
        assert bad == (
            f"the IMAP server {dovecot.host}:{dovecot.imap_port} refused the user name or"
            " password ([AUTHENTICATIONFAILED] Authentication failed.)"
        )
        b.mailboxes.allowed = []  # loopback is not for grants unless config allows it
        said = await b.mailboxes.check(b.grant, good)
        assert said is not None and "may not connect" in said


async def test_a_server_without_the_ca_is_refused(dovecot: Dovecot, tmp_path: Path) -> None:
    async with wired(
        dovecot, f"sqlite:///{tmp_path / 'm.db'}", tmp_path, tls=TlsMode.IMPLICIT
    ) as b:
        b.mailboxes.tls = __import__("ssl").create_default_context()  # the system CAs only
        said = await b.mailboxes.check(
            b.grant, Credentials(AuthMethod.PASSWORD, dovecot.users[b.user])
        )
        assert said is not None and "TLS" in said and "certificate" in said


async def test_an_oauth2_token_logs_in_with_xoauth2(box: Box) -> None:
    """Dovecot checks an XOAUTH2 token against its passdb (here the passwd-file)."""
    b = box
    token = Credentials(AuthMethod.XOAUTH2, b.server.users[b.user])
    oauth = replace(b.grant, auth=AuthMethod.XOAUTH2)
    await b.store.update_grant(oauth, seal(b.mailboxes.box, token))
    assert await b.mailboxes.check(oauth, token) is None
    b.server.append(b.user, message("Via token"))
    assert (await b.mailboxes.sync_now(await b.refresh())).created == 1


class HostileImap:
    """An IMAP server on loopback that greets, then answers LOGIN with a line announcing
    a literal of a terabyte and starts sending it as fast as the client reads."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sent = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with self.sock:
            conn, _ = self.sock.accept()
        with conn:
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hostile ready\r\n")
            line = conn.makefile("rb").readline()
            tag = line.split(b" ", 1)[0]
            conn.sendall(b"* CAPABILITY IMAP4rev1 {1000000000000}\r\n")
            chunk = b"\0" * 65536
            with contextlib.suppress(OSError):
                while self.sent < 300 * 1024 * 1024:  # the client stops reading, or this
                    conn.sendall(chunk)
                    self.sent += len(chunk)
                conn.sendall(tag + b" OK done\r\n")


async def test_a_server_announcing_a_huge_literal_is_dropped_at_once(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    hostile = HostileImap()
    async with wired(dovecot, f"sqlite:///{tmp_path / 'm.db'}", tmp_path) as b:
        grant = replace(b.grant, imap=Server("127.0.0.1", hostile.port, TlsMode.NONE))
        began = time.monotonic()
        said = await b.mailboxes.check(grant, Credentials(AuthMethod.PASSWORD, "x"))
        assert said is not None and "literal of 1000000000000 bytes" in said, said
        assert time.monotonic() - began < 10  # not read until a timeout
        assert hostile.sent < 64 * 1024 * 1024, "the client stopped reading at the size"


async def test_a_burst_of_api_reads_holds_few_connections_to_the_server(box: Box) -> None:
    """Twenty reads at once of one mailbox: each answered, never more than
    API_CONNECTIONS_PER_GRANT connections open to its server at a time."""
    b = box
    b.server.append(b.user, message("Read me", body="The body read over IMAP."))
    await b.mailboxes.sync_now(b.grant)
    (m,), _ = await b.mailboxes.messages(b.grant, MessageFilter(subject="Read me"))
    counted = count_connections(b.mailboxes)
    bodies = await asyncio.gather(*(b.mailboxes.raw(b.grant, m.id) for _ in range(20)))
    assert all(body is not None and b"The body read over IMAP." in body for body in bodies)
    assert counted.peak <= API_CONNECTIONS_PER_GRANT, counted.peak
    assert counted.now == 0
