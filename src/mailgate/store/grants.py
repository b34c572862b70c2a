"""Grants, the connected mailboxes: their rows, written and read once for both backends
(statements in sql/grants.sql). The sealed credentials (mailboxes/grants.py seals them)
travel only into add_grant / update_grant and out of grant_credentials: a Grant value
never carries them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailgate.mailboxes.models import AuthMethod, Grant, GrantStatus, Server, TlsMode
from mailgate.models import GRANT_ROUTE, Message
from mailgate.store.protocols import Tx
from mailgate.store.rows import message_from_row


def _row(grant: Grant) -> tuple[Any, ...]:
    """The columns insert_grant and update_grant share, in their order."""
    return (
        grant.email,
        grant.username,
        grant.auth.value,
        grant.imap.host,
        grant.imap.port,
        grant.imap.tls.value,
        grant.smtp.host,
        grant.smtp.port,
        grant.smtp.tls.value,
        grant.status.value,
        grant.error,
        int(grant.server_files_sent),
    )


def grant_from_row(r: Sequence[Any]) -> Grant:
    return Grant(
        id=str(r[0]),
        api_key_id=r[1],
        email=str(r[2]),
        username=str(r[3]),
        auth=AuthMethod(r[4]),
        imap=Server(str(r[5]), int(r[6]), TlsMode(r[7])),
        smtp=Server(str(r[8]), int(r[9]), TlsMode(r[10])),
        status=GrantStatus(r[11]),
        error=r[12],
        server_files_sent=bool(r[13]),
        created_at=float(r[14]),
        updated_at=float(r[15]),
        synced_at=None if r[16] is None else float(r[16]),
    )


# -- state changes (store/base.py CHANGES) --------------------------------------------


async def add_grant(tx: Tx, grant: Grant, sealed: str) -> None:
    await tx.execute(
        "insert_grant",
        grant.id,
        grant.api_key_id,
        *_row(grant),
        grant.created_at,
        grant.updated_at,
        grant.synced_at,
        sealed,
    )


async def update_grant(tx: Tx, grant: Grant, sealed: str | None) -> bool:
    """Everything but the id, owner and creation time; the credentials too when given."""
    return (
        await tx.fetchrow(
            "update_grant", *_row(grant), grant.updated_at, grant.synced_at, sealed, grant.id
        )
        is not None
    )


async def set_grant_status(
    tx: Tx, grant_id: str, status: str, error: str | None, now: float
) -> bool:
    return await tx.fetchrow("set_grant_status", status, error, now, grant_id) is not None


async def delete_grant(tx: Tx, grant_id: str) -> bool:
    return await tx.fetchrow("delete_grant", grant_id) is not None


# -- reads ----------------------------------------------------------------------------


async def get_grant(tx: Tx, grant_id: str) -> Grant | None:
    row = await tx.fetchrow("get_grant", grant_id)
    return None if row is None else grant_from_row(row)


async def grants(tx: Tx, api_key_id: str | None) -> list[Grant]:
    if api_key_id is None:
        return [grant_from_row(r) for r in await tx.fetch("list_grants")]
    return [grant_from_row(r) for r in await tx.fetch("list_grants_for_key", api_key_id)]


async def grant_scheduled(tx: Tx, grant_id: str, limit: int) -> list[Message]:
    """The grant's scheduled messages (sent or not), newest first."""
    rows = await tx.fetch("grant_scheduled", GRANT_ROUTE.format(grant_id), limit)
    return [message_from_row(r) for r in rows]


async def grant_credentials(tx: Tx, grant_id: str) -> str | None:
    row = await tx.fetchrow("grant_credentials", grant_id)
    return None if row is None else str(row[0])
