"""The nouns of connected mailboxes: grants, their folders, messages and threads.

A grant is an existing mailbox that mailgate reads over IMAP and sends from over SMTP
submission, with the mailbox's own credentials. Plain frozen dataclasses: nothing here
does I/O. Credentials are never part of these values (the store keeps them sealed with
secretbox.py; only the sync and the delivery of a grant's mail unseal them)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TlsMode(enum.StrEnum):
    """How a connection to the mailbox's server is secured."""

    IMPLICIT = "implicit"  # TLS from the first byte (IMAPS 993, submissions 465)
    STARTTLS = "starttls"  # plain, then STARTTLS before any credential is sent
    NONE = "none"  # tests and loopback only: credentials in the clear


class AuthMethod(enum.StrEnum):
    PASSWORD = "password"  # IMAP LOGIN / AUTH PLAIN
    XOAUTH2 = "xoauth2"  # an OAuth2 access token (Gmail, Microsoft 365)


class GrantStatus(enum.StrEnum):
    """Nylas' words: a grant whose credentials the server refuses is `invalid` until it is
    re-authenticated."""

    VALID = "valid"
    INVALID = "invalid"


class FolderRole(enum.StrEnum):
    """SPECIAL-USE (RFC 6154) roles, and INBOX."""

    INBOX = "inbox"
    SENT = "sent"
    DRAFTS = "drafts"
    TRASH = "trash"
    ARCHIVE = "archive"
    JUNK = "junk"


@dataclass(frozen=True, slots=True)
class Server:
    host: str
    port: int
    tls: TlsMode


@dataclass(frozen=True, slots=True)
class Grant:
    """A connected mailbox. `api_key_id` owns it: only that key (or an admin) sees it."""

    id: str
    api_key_id: str | None
    email: str  # the mailbox's address: the From of what is sent from it
    username: str  # the login name on both servers
    auth: AuthMethod
    imap: Server
    smtp: Server
    status: GrantStatus
    created_at: float
    updated_at: float
    error: str | None = None  # why the last connection failed (shown, never a secret)
    synced_at: float | None = None  # the end of the last complete sync pass
    server_files_sent: bool = False  # the SMTP server files what it sends in Sent itself


@dataclass(frozen=True, slots=True)
class Participant:
    email: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Folder:
    id: str
    grant_id: str
    name: str  # the IMAP mailbox name, decoded (modified UTF-7 undone)
    role: FolderRole | None
    total: int = 0
    unread: int = 0


@dataclass(frozen=True, slots=True)
class MailboxMessage:
    """One message of a grant as synced. `id` stays the same while the message exists in
    the mailbox, also when another client moves it to another folder."""

    id: str
    grant_id: str
    thread_id: str
    folder_id: str
    uid: int  # in its folder, under that folder's UIDVALIDITY
    message_id_header: str  # Message-ID, with its angle brackets; "" when absent
    in_reply_to: str
    references: tuple[str, ...]
    subject: str
    from_: tuple[Participant, ...]
    to: tuple[Participant, ...]
    cc: tuple[Participant, ...]
    bcc: tuple[Participant, ...]
    reply_to: tuple[Participant, ...]
    date: float  # the Date header (received time when absent or unreadable)
    snippet: str  # the first ~200 characters of the text
    unread: bool
    starred: bool
    has_attachments: bool
    size: int


@dataclass(frozen=True, slots=True)
class Thread:
    id: str
    grant_id: str
    subject: str
    message_ids: tuple[str, ...]  # oldest first
    participants: tuple[Participant, ...]
    folder_ids: tuple[str, ...]
    earliest_message_date: float
    latest_message_date: float
    snippet: str  # of the latest message
    unread: bool  # any message unread
    starred: bool  # any message starred
    has_attachments: bool


@dataclass(frozen=True, slots=True)
class Credentials:
    """What logs in to both servers: a password, or an OAuth2 access token (XOAUTH2).
    Sealed in the store (secretbox.py); its repr never shows the secret."""

    auth: AuthMethod
    secret: str

    def __repr__(self) -> str:
        return f"Credentials(auth={self.auth.value!r}, secret=<hidden>)"


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """A listing of a grant's messages (Nylas' query parameters); None: any. Newest first."""

    in_folder: str | None = None  # a folder id, or its role ("inbox", "sent") or name
    unread: bool | None = None
    starred: bool | None = None
    from_: str | None = None  # an address
    to: str | None = None  # an address in To, Cc or Bcc
    any_email: tuple[str, ...] = ()  # any of these in From, To, Cc or Bcc
    subject: str | None = None  # the exact subject
    received_after: float | None = None
    received_before: float | None = None
    has_attachment: bool | None = None
    thread_id: str | None = None
    limit: int = 50
    page_token: str | None = None


@dataclass(frozen=True, slots=True)
class ThreadFilter:
    """A listing of a grant's threads: a thread matches when one of its messages does.
    Newest latest message first."""

    in_folder: str | None = None
    unread: bool | None = None
    starred: bool | None = None
    from_: str | None = None
    to: str | None = None
    any_email: tuple[str, ...] = ()
    subject: str | None = None
    latest_message_after: float | None = None
    latest_message_before: float | None = None
    has_attachment: bool | None = None
    limit: int = 50
    page_token: str | None = None


@dataclass(frozen=True, slots=True)
class FolderState:
    """Where the sync of one folder stands (RFC 3501 UIDVALIDITY / UIDNEXT, RFC 7162
    HIGHESTMODSEQ): every UID below `uidnext` under `uidvalidity` is stored."""

    id: str
    grant_id: str
    name: str
    role: FolderRole | None
    uidvalidity: int = 0  # 0: never synced
    uidnext: int = 0
    highestmodseq: int = 0  # 0: flags not known by modseq
