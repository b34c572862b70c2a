"""Captured mail: with delivery.mode = "capture" nothing is sent, every message is kept
and read here (the Mailpit / MailHog workflow): the newest first, 50 a page by cursor
(the messages' primary key, as the messages page walks it), each opening the message's
page (its HTML in the sandboxed frame, its text, attachments, headers and source)."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from mailgate.models import Message, MessageQuery
from mailgate.store import Store
from mailgate.store.protocols import RecipientGlimpse
from mailgate.ui.gate import PREFIX, Gate, Visitor
from mailgate.ui.messages import PAGE_SIZE, SEARCH_BUDGET, SHOWN, ULID


class CapturedPage:
    def __init__(self, gate: Gate, store: Store, capture: bool) -> None:
        self.gate, self.store, self.capture = gate, store, capture

    async def show(self, request: Request, visitor: Visitor) -> Response:
        rows: list[tuple[Message, RecipientGlimpse]] = []
        older, cursor = None, request.query_params.get("cursor", "")
        if self.capture:
            query = MessageQuery(cursor=cursor if ULID.match(cursor) else None, limit=PAGE_SIZE)
            page = await self.store.search_messages(query, SEARCH_BUDGET)
            glimpses = await self.store.recipient_glimpses([m.id for m in page.messages], SHOWN)
            rows = [(m, glimpses[m.id]) for m in page.messages]
            if page.next_cursor:
                older = f"{PREFIX}/captured?{urlencode({'cursor': page.next_cursor})}"
        return self.gate.pages.render(
            "captured.html",
            visitor=visitor,
            nav="captured",
            enabled=self.capture,
            rows=rows,
            older=older,
            paged=bool(cursor),
        )
