"""GET /v1/events: the outbox, page by page in commit order, for consumers that cannot
take webhooks. A key reads the events of its own messages; an admin key reads all (with
the domains' events, which belong to no key). The cursor never skips an event: it is the
store's (SQLite: the event id; PostgreSQL: the writing transaction and the id)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.requests import Request

from mailgate.events.payloads import KIND_OF_TYPE, Context, payload
from mailgate.http import models as m
from mailgate.http.auth import Auth
from mailgate.http.errors import invalid
from mailgate.http.openapi import ERRORS
from mailgate.models import Scope
from mailgate.store import Store

TYPES = tuple(sorted(KIND_OF_TYPE))
TYPES_HELP = f"Only these types (repeat the parameter): {', '.join(TYPES)}"


class Events:
    def __init__(self, auth: Auth, store: Store) -> None:
        self.auth, self.store = auth, store

    async def list_events(
        self,
        request: Request,
        after: str | None = Query(
            None, pattern=r"^[0-9]{1,20}(:[0-9]{1,20})?$", description="next_cursor of a page"
        ),
        types: Annotated[list[str] | None, Query(alias="type", description=TYPES_HELP)] = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> m.EventPage:
        key = await self.auth.key_for(request, Scope.READ)
        wanted = set(types or ())
        unknown = sorted(wanted - set(KIND_OF_TYPE))
        if unknown:
            raise invalid(f"Unknown event type {unknown[0]!r}; one of {', '.join(TYPES)}", "type")
        owner = None if key.has(Scope.ADMIN) else key.id
        try:
            events, cursor = await self.store.events_since(after, limit, owner)
        except (
            ValueError,
            OverflowError,
        ):  # the other backend's cursor form, or too big (SQLite: n; PostgreSQL: xid:n)
            raise invalid("Not a cursor this server gave: use next_cursor", "after") from None
        message_ids = sorted({e.message_id for e in events if e.message_id})
        recipient_ids = sorted({e.recipient_id for e in events if e.recipient_id is not None})
        messages, recipients = await self.store.event_context(message_ids, recipient_ids)
        context = Context(messages, recipients)
        data: list[dict[str, Any]] = []
        for event in events:
            shown = payload(event, context)
            if shown is not None and (not wanted or shown["type"] in wanted):
                data.append(shown)
        # a page may hold fewer than `limit` (unpublished or filtered events), never skip
        return m.EventPage(data=data, next_cursor=cursor, has_more=len(events) == limit)


def router(events: Events) -> APIRouter:
    r = APIRouter()
    r.add_api_route(
        "/v1/events",
        events.list_events,
        methods=["GET"],
        response_model=m.EventPage,
        responses=ERRORS,
        summary="Events in commit order, after a cursor (message.*, domain.*)",
    )
    return r
