"""mailgate's exceptions, one tree.

MailgateError                  base of everything mailgate raises on purpose
├── ConfigError                a setting is unknown or has a bad value (exit 2)
├── StoreError                 the store could not do what was asked
│   ├── StoreUnavailable       cannot commit now (disk full, database gone): answer 4xx / 503
│   ├── StoreLocked            another process holds the SQLite database
│   └── DuplicateIdempotencyKey  an idempotency key was already used by that API key
├── NotFound                   a named message, key or recipient does not exist
├── SessionClosed              the SMTP relay or its client ended the session: stop quietly
├── MailboxError               a grant's IMAP server could not do what was asked
│   ├── MailboxUnreachable     no connection: refused, timed out, TLS failed (try again later)
│   └── MailboxAuthRefused     the server refused the grant's credentials (grant invalid)
└── ConnectionLost             delivery: the connection broke or timed out
    ├── ProtocolError          the peer sent what SMTP does not allow here
    └── PlaintextRetry         opportunistic STARTTLS failed: start over without TLS

The HTTP API's ApiError (an answer with a status and a JSON body) joins this tree too.
"""

from __future__ import annotations


class MailgateError(Exception):
    """Base class for errors mailgate raises on purpose."""


class ConfigError(MailgateError):
    """A setting is unknown or has a bad value; the message names the key."""


class StartupError(MailgateError):
    """serve cannot start for a reason its operator can fix (a port taken, a directory
    not writable): said in one line, exit status 2, like bad config."""


class StoreError(MailgateError):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """The store cannot commit right now; callers answer with a temporary failure."""


class StoreLocked(StoreError):
    """Another process holds the SQLite database file."""


class DuplicateIdempotencyKey(StoreError):
    """The (api key, idempotency key) pair is already stored; carries the first message id."""

    def __init__(self, message_id: str) -> None:
        super().__init__(f"idempotency key already used by message {message_id}")
        self.message_id = message_id

    def __reduce__(self) -> tuple[type[DuplicateIdempotencyKey], tuple[str]]:
        return DuplicateIdempotencyKey, (self.message_id,)  # crosses to serve's processes


class NotFound(MailgateError):
    """A named object does not exist (or is not visible to the caller)."""


class MailboxError(MailgateError):
    """A connected mailbox's IMAP server could not do what was asked; the message is one
    sentence that can be shown (it never holds a secret)."""


class MailboxUnreachable(MailboxError):
    """No usable connection to the grant's IMAP server (refused, timed out, TLS failed,
    dropped mid-command): temporary, the sync tries again."""


class MailboxAuthRefused(MailboxError):
    """The server refused the grant's credentials: the grant is invalid until
    re-authenticated."""


class SessionClosed(MailgateError):
    """The SMTP relay hung up (or its client did): the session stops quietly."""


class ConnectionLost(MailgateError):
    """Delivery: the connection broke, timed out or spoke something that is not SMTP."""


class ProtocolError(ConnectionLost):
    """The peer sent what SMTP does not allow here: garbage, or data nobody asked for."""


class PlaintextRetry(ConnectionLost):
    """Opportunistic STARTTLS failed: start over without TLS."""


class RequestError(MailgateError):
    """A request on a resource (a domain, a webhook) that cannot be done; `code` says why
    (invalid_field, not_found, already_exists, conflict), `field` names the part of the
    request at fault. The HTTP API and the CLI show it as they show their own errors."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field
