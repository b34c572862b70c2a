"""The one door: both ingresses hand a composed message here, and acknowledge only
after this returns, i.e. after the message, its recipients and its `accepted`
event are committed to disk in one transaction.

Raises StoreUnavailable when the store cannot commit (callers answer 451 / 503).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.errors import DuplicateIdempotencyKey
from mailgate.models import NewMessage
from mailgate.store import Store


@dataclass(frozen=True, slots=True)
class Accepted:
    message_id: str
    replayed: bool  # True: an earlier message with the same idempotency key answers


async def accept(store: Store, message: NewMessage) -> Accepted:
    """Commit the message durably; only then may the caller acknowledge it."""
    try:
        message_id = await store.enqueue(message)
    except DuplicateIdempotencyKey as dup:
        return Accepted(dup.message_id, replayed=True)
    return Accepted(message_id, replayed=False)


async def accept_many(store: Store, messages: list[NewMessage]) -> list[str]:
    """Commit several messages in one transaction (all or none)."""
    return await store.enqueue_many(messages)
