"""The queue page: the routes (destination domains) with recipients waiting, most first,
and one route's waiting recipients, soonest due first, with their last reply, each with
its message's retry now and cancel (messages.py: the store's own changes). The routes'
counts come from an index alone (Store.waiting_routes), so the page stays quick with a
big backlog."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from mailgate.models import RecipientStatus
from mailgate.store import Store
from mailgate.ui.gate import PREFIX, Gate, Visitor

ROUTES_SHOWN = 100
WAITING_SHOWN = 200


class QueuePage:
    def __init__(self, gate: Gate, store: Store) -> None:
        self.gate, self.store = gate, store

    async def show(self, request: Request, visitor: Visitor) -> Response:
        route = request.query_params.get("route", "").strip()[:255]
        routes = await self.store.waiting_routes(ROUTES_SHOWN)
        waiting = await self.store.waiting_at(route, WAITING_SHOWN) if route else []
        deferred = sum(r.status is RecipientStatus.DEFERRED for r in waiting)
        here = f"{PREFIX}/queue" + (f"?{urlencode({'route': route})}" if route else "")
        done = request.query_params.get("done", "")
        return self.gate.pages.render(
            "queue.html",
            visitor=visitor,
            nav="queue",
            routes=routes,
            route=route,
            waiting=waiting,
            deferred=deferred,
            shown=WAITING_SHOWN,
            here=here,
            done=done if done in ("retried", "cancelled", "nothing") else "",
        )
