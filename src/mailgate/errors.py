"""mailgate's exceptions, one tree.

MailgateError                  base of everything mailgate raises on purpose
├── ConfigError                a setting is unknown or has a bad value (exit 2)
├── StoreError                 the store could not do what was asked
│   ├── StoreUnavailable       cannot commit now (disk full, database gone): answer 4xx / 503
│   ├── StoreLocked            another process holds the SQLite database
│   └── DuplicateIdempotencyKey  an idempotency key was already used by that API key
└── NotFound                   a named message, key or recipient does not exist
"""

from __future__ import annotations


class MailgateError(Exception):
    """Base class for errors mailgate raises on purpose."""


class ConfigError(MailgateError):
    """A setting is unknown or has a bad value; the message names the key."""


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


class NotFound(MailgateError):
    """A named object does not exist (or is not visible to the caller)."""
