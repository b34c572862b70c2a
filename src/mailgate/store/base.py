"""The Store protocol over a backend engine: every read and state change delegates to
store/queries.py and store/queue.py inside the engine's read or write transaction.

A backend subclasses EngineStore and supplies the engine: _read and _write (how a
connection is found and a transaction committed), plus what really differs per engine:
open/close, enqueue's group commit, the events cursor and how workers wait."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from mailgate.models import (
    ApiKey,
    Claim,
    Event,
    Message,
    MessageQuery,
    Recipient,
    RecipientStatus,
    Settlement,
)
from mailgate.store import queries, queue
from mailgate.store.protocols import Dsn, Tx

T = TypeVar("T")
Work = Callable[[Tx], Coroutine[Any, Any, T]]


class EngineStore:
    async def _read(self, fn: Work[T]) -> T:
        raise NotImplementedError

    async def _write(self, fn: Work[T]) -> T:
        """Run fn in one write transaction; return after it is committed."""
        raise NotImplementedError

    async def ping(self) -> None:
        node = f"{os.uname().nodename}:{os.getpid()}"
        await self._write(lambda tx: queue.ping(tx, node))

    # -- reads ----------------------------------------------------------------
    async def get_message(self, message_id: str) -> Message | None:
        return await self._read(lambda tx: queries.get_message(tx, message_id))

    async def get_raw(self, message_id: str) -> bytes | None:
        return await self._read(lambda tx: queries.get_raw(tx, message_id))

    async def load(self, message_ids: Sequence[str]) -> dict[str, tuple[Message, bytes]]:
        return await self._read(lambda tx: queries.load(tx, message_ids))

    async def recipients(self, message_id: str) -> list[Recipient]:
        return await self._read(lambda tx: queries.recipients(tx, message_id))

    async def events(self, message_id: str) -> list[Event]:
        return await self._read(lambda tx: queries.events(tx, message_id))

    async def list_messages(self, query: MessageQuery) -> list[Message]:
        return await self._read(lambda tx: queries.list_messages(tx, query))

    async def idempotent_response(self, api_key_id: str | None, key: str) -> tuple[str, str] | None:
        return await self._read(lambda tx: queries.idempotent_response(tx, api_key_id, key))

    async def status_counts(self) -> dict[RecipientStatus, int]:
        return await self._read(queries.status_counts)

    async def get_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        return await self._read(lambda tx: queries.get_key(tx, key_id))

    async def list_keys(self) -> list[ApiKey]:
        return await self._read(queries.list_keys)

    # -- state changes ----------------------------------------------------------
    async def claim(self, owner: str, now: float, limit: int, lease_seconds: float) -> Claim | None:
        return await self._write(lambda tx: queue.claim(tx, owner, now, limit, lease_seconds))

    async def settle(
        self, owner: str, settlements: Sequence[Settlement], dsns: Sequence[Dsn] = ()
    ) -> int:
        now = time.time()
        return await self._write(lambda tx: queue.settle(tx, owner, settlements, dsns, now))

    async def release(self, owner: str, recipient_ids: Sequence[int], now: float) -> int:
        return await self._write(lambda tx: queue.release(tx, owner, recipient_ids, now))

    async def recover_leases(self, owner_prefix: str, now: float) -> int:
        return await self._write(lambda tx: queue.recover_leases(tx, owner_prefix, now))

    async def cancel(self, message_id: str, now: float) -> int:
        return await self._write(lambda tx: queue.cancel(tx, message_id, now))

    async def retry_now(self, message_id: str, now: float) -> int:
        return await self._write(lambda tx: queue.retry_now(tx, message_id, now))

    async def add_key(self, key: ApiKey, secret_hash: str) -> None:
        await self._write(lambda tx: queue.add_key(tx, key, secret_hash))

    async def revoke_key(self, key_id: str, now: float) -> bool:
        return await self._write(lambda tx: queue.revoke_key(tx, key_id, now))
