"""One IMAP connection to a grant's server: connect with its TLS mode, log in (LOGIN or
XOAUTH2), list folders with their SPECIAL-USE roles.

The client is IMAPClient (imapclient, 4.x): a mature, well-kept library over the standard
imaplib that parses FETCH responses, decodes modified UTF-7 folder names, and speaks
IDLE, CONDSTORE (CHANGEDSINCE modifiers), MOVE, UIDPLUS and XOAUTH2. It is blocking, so
each connection is driven from one worker thread at a time through `Connection.run`
(asyncio.to_thread): the event loop never waits on the socket, and a connection is
never used from two threads at once. aioimaplib was the other candidate; it leaves
FETCH responses as raw lines for the caller to parse, which is the part of IMAP that is
easiest to get wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import imaplib
import ipaddress
import socket
import ssl
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import imapclient
import imapclient.exceptions
import imapclient.imap4
import imapclient.tls
from imapclient.imapclient import seq_to_parenstr_upper
from imapclient.response_parser import parse_fetch_response

from mailgate.errors import MailboxAuthRefused, MailboxError, MailboxUnreachable
from mailgate.mailboxes.models import AuthMethod, Credentials, FolderRole, Server, TlsMode
from mailgate.reachable import Network, forbidden

T = TypeVar("T")
TIMEOUT = 30.0  # seconds for connect and each command (an IDLE wait sets its own)
# The largest literal (a message, a header block) read from a server: imaplib reads
# whatever size a server announces into memory, so a hostile one could ask for any.
MAX_LITERAL = 100 * 1024 * 1024

SPECIAL_USE: dict[bytes, FolderRole] = {
    b"\\sent": FolderRole.SENT,
    b"\\drafts": FolderRole.DRAFTS,
    b"\\trash": FolderRole.TRASH,
    b"\\archive": FolderRole.ARCHIVE,
    b"\\all": FolderRole.ARCHIVE,  # Gmail's "All Mail" when no \Archive is offered
    b"\\junk": FolderRole.JUNK,
}

# What a lost or broken connection raises inside imapclient / imaplib.
BROKEN = (OSError, EOFError, imaplib.IMAP4.abort, imapclient.exceptions.IMAPClientAbortError)


@dataclass(frozen=True, slots=True)
class Listed:
    name: str  # decoded
    role: FolderRole | None


def _read_capped(imap: imaplib.IMAP4, size: int) -> bytes:
    """imaplib's literal read, refusing a size over MAX_LITERAL before reading any of it
    (the connection is dropped: MailboxUnreachable)."""
    if size > MAX_LITERAL:
        raise imaplib.IMAP4.abort(
            f"the server sent a literal of {size} bytes (at most {MAX_LITERAL} are read)"
        )
    return cast(bytes, imap.file.read(size))


class _Plain(imapclient.imap4.IMAP4WithTimeout):  # type: ignore[misc]
    read = _read_capped


class _Tls(imapclient.tls.IMAP4_TLS):  # type: ignore[misc]
    read = _read_capped


class CappedClient(imapclient.IMAPClient):  # type: ignore[misc]
    """IMAPClient whose imaplib connection reads no literal over MAX_LITERAL, from the
    first answer on (imaplib asks CAPABILITY while it connects)."""

    def _create_IMAP4(self) -> imaplib.IMAP4:
        connect_timeout = getattr(self._timeout, "connect", None)
        if self.ssl:
            return _Tls(self.host, self.port, self.ssl_context, connect_timeout)
        return _Plain(self.host, self.port, connect_timeout)


class Connection:
    """A logged-in IMAPClient and the thread hop to use it from async code."""

    def __init__(self, client: imapclient.IMAPClient) -> None:
        self.client = client
        self.executor: Executor | None = None  # None: the loop's default threads
        caps = client.capabilities()
        self.condstore = b"CONDSTORE" in caps
        self.idle = b"IDLE" in caps
        self.move = b"MOVE" in caps
        self.qresync = b"QRESYNC" in caps and self.condstore
        if self.qresync:  # CONDSTORE too; FETCH (CHANGEDSINCE m VANISHED) names what went
            client.enable("QRESYNC")
        elif self.condstore:
            client.enable("CONDSTORE")  # SELECT answers HIGHESTMODSEQ from now on

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))
        except BROKEN as exc:
            raise MailboxUnreachable(f"the IMAP connection was lost: {_why(exc)}") from exc
        except imapclient.exceptions.IMAPClientError as exc:  # a NO or BAD to a command
            raise MailboxError(f"the IMAP server answered: {_why(exc)}") from exc

    def told_since_select(self) -> bool:
        """Whether the server announced a new message count after the last SELECT.

        imaplib keeps each untagged EXISTS (SELECT flushes them and adds its own); the
        later ones come with any command's answer, and IMAPClient's fetch and search drop
        them, so this is the one place such an announcement can still be seen."""
        told = self.client._imap.untagged_responses.get("EXISTS", [])
        return len(told) > 1

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.client.logout)
        with contextlib.suppress(Exception):
            self.client.shutdown()


def check_address(host: str, port: int, allowed: list[Network]) -> None:
    """Only globally reachable addresses unless config allows more (as delivery and
    webhooks): a grant must not make mailgate connect to its own network."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise MailboxUnreachable(f"the IMAP server {host} could not be found ({exc})") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if forbidden(address, allowed):
            raise MailboxUnreachable(
                f"the IMAP server {host} is at {address}, which mailgate may not connect to"
                " (mailboxes.allow_private_networks)"
            )


def connect_blocking(
    server: Server,
    username: str,
    creds: Credentials,
    tls: ssl.SSLContext,
    allowed: list[Network],
    timeout: float = TIMEOUT,
) -> imapclient.IMAPClient:
    """Connect, secure and log in; MailboxUnreachable or MailboxAuthRefused otherwise."""
    check_address(server.host, server.port, allowed)
    where = f"{server.host}:{server.port}"
    try:
        client = CappedClient(
            server.host,
            port=server.port,
            ssl=server.tls is TlsMode.IMPLICIT,
            ssl_context=tls,
            timeout=timeout,
        )
    except ssl.SSLError as exc:
        raise MailboxUnreachable(f"TLS with the IMAP server {where} failed: {_why(exc)}") from exc
    except BROKEN as exc:
        raise MailboxUnreachable(f"the IMAP server {where} is unreachable: {_why(exc)}") from exc
    try:
        if server.tls is TlsMode.STARTTLS:
            if not client.has_capability("STARTTLS"):
                raise MailboxUnreachable(f"the IMAP server {where} does not offer STARTTLS")
            client.starttls(tls)
        if creds.auth is AuthMethod.XOAUTH2:
            client.oauth2_login(username, creds.secret)
        else:
            client.login(username, creds.secret)
    except imapclient.exceptions.LoginError as exc:
        client.shutdown()
        raise MailboxAuthRefused(
            f"the IMAP server {where} refused the user name or password ({_why(exc)})"
        ) from exc
    except ssl.SSLError as exc:
        client.shutdown()
        raise MailboxUnreachable(f"TLS with the IMAP server {where} failed: {_why(exc)}") from exc
    except BROKEN as exc:
        with contextlib.suppress(Exception):
            client.shutdown()
        raise MailboxUnreachable(f"the IMAP server {where} is unreachable: {_why(exc)}") from exc
    except imapclient.exceptions.IMAPClientError as exc:
        client.shutdown()
        raise MailboxUnreachable(f"the IMAP server {where} answered: {_why(exc)}") from exc
    return client


async def connect(
    server: Server,
    username: str,
    creds: Credentials,
    tls: ssl.SSLContext,
    allowed: list[Network],
) -> Connection:
    client = await asyncio.to_thread(connect_blocking, server, username, creds, tls, allowed)
    try:
        return await asyncio.to_thread(Connection, client)
    except BROKEN as exc:
        raise MailboxUnreachable(f"the IMAP connection was lost: {_why(exc)}") from exc
    except imapclient.exceptions.IMAPClientError as exc:
        client.shutdown()
        raise MailboxError(f"the IMAP server answered: {_why(exc)}") from exc


def fetch_range(
    client: imapclient.IMAPClient,
    uids: str,
    data: list[bytes],
    modifiers: list[str] | None = None,
) -> dict[int, dict[bytes, Any]]:
    """UID FETCH of a range ("1:500"): IMAPClient.fetch keeps only the UIDs it was given
    one by one (it drops what it takes for unsolicited answers), so a range would come
    back empty; this is its body without that filter."""
    args = ["UID", "FETCH", uids, seq_to_parenstr_upper(data)]
    if modifiers:
        args.append(seq_to_parenstr_upper(modifiers))
    imap = client._imap
    typ, got = imap._command_complete("FETCH", imap._command(*args))
    if typ != "OK":
        raise imapclient.exceptions.IMAPClientError(f"FETCH failed: {got!r}")
    typ, got = imap._untagged_response(typ, got, "FETCH")
    return dict(parse_fetch_response(got, client.normalise_times, True))


def fetch_changes(
    client: imapclient.IMAPClient, below: int, modseq: int, qresync: bool
) -> tuple[dict[int, dict[bytes, Any]], list[int] | None]:
    """Flags changed since `modseq` among UIDs 1..below-1 (CONDSTORE), and with QRESYNC
    the UIDs expunged since (RFC 7162 VANISHED (EARLIER)); None: not known."""
    client._imap.untagged_responses.pop("VANISHED", None)  # stale ones from before
    modifiers = [f"CHANGEDSINCE {modseq}"] + (["VANISHED"] if qresync else [])
    changed = fetch_range(client, f"1:{below - 1}", [b"FLAGS"], modifiers)
    if not qresync:
        return changed, None
    gone: list[int] = []
    for line in client._imap.untagged_responses.pop("VANISHED", []):
        text = line.decode() if isinstance(line, bytes) else str(line)
        gone += uid_set(text.replace("(EARLIER)", "").strip())
    return changed, gone


def idle_wait(client: imapclient.IMAPClient, timeout: float) -> bool:
    """Whether the server said anything while IDLE, waiting at most `timeout` seconds.

    IMAPClient's idle_check polls the socket only, so a line that came in the same
    packet as IDLE's "+ idling" (the server telling at once what arrived just before)
    sits unread in imaplib's buffer: look there first."""
    sock = client.socket()
    before = sock.gettimeout()
    sock.setblocking(False)
    try:
        with contextlib.suppress(BlockingIOError, ssl.SSLWantReadError):
            if client._imap.file.peek(1):
                return True
    finally:
        sock.settimeout(before)
    return bool(client.idle_check(timeout))


def uid_set(text: str) -> list[int]:
    """An IMAP sequence set of UIDs ("2:3,5") as a list."""
    out: list[int] = []
    for piece in text.split(","):
        if not piece:
            continue
        first, _, last = piece.partition(":")
        lo, hi = int(first), int(last or first)
        out += range(min(lo, hi), max(lo, hi) + 1)
    return out


def list_folders(client: imapclient.IMAPClient) -> list[Listed]:
    """Selectable folders with their roles, INBOX first."""
    out: list[Listed] = []
    for flags, _, name in client.list_folders():
        lowered = {f.lower() for f in flags}
        if b"\\noselect" in lowered or b"\\nonexistent" in lowered:
            continue
        name = name if isinstance(name, str) else name.decode()
        if name.upper() == "INBOX":
            out.append(Listed("INBOX", FolderRole.INBOX))
            continue
        role = next((SPECIAL_USE[f] for f in lowered if f in SPECIAL_USE), None)
        out.append(Listed(name, role))
    out.sort(key=lambda f: (f.role is not FolderRole.INBOX, f.name))
    return out


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    if text[:2] in ("b'", 'b"') and text[-1:] == text[1]:  # imapclient passes bytes on
        text = text[2:-1]
    return text or type(exc).__name__
