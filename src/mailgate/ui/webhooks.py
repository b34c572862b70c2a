"""The webhooks page: every endpoint (its URL, event types, state), one endpoint's
attempt log (newest first), and replay of an event (by its id, from the log or typed
in): carried out by the API's own WebhookAdmin (events/endpoints.py), which checks
ownership, builds the event's payload and queues it for every endpoint that takes it.

Nothing a URL says is shown as the page's own words: a replay's success comes back as
an event id and a count (checked), and its failure is answered on the POST itself, so a
link (kept through sign-in by its next=) cannot put text of its choosing into the
dashboard's notices."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailgate.errors import RequestError
from mailgate.events.endpoints import WebhookAdmin
from mailgate.ui.gate import PREFIX, Gate, Visitor, field, local_path, read_form

ATTEMPTS_SHOWN = 100
EVENT_ID = re.compile(r"^evt_[0-9]{1,18}$")  # a published event's id (events/payloads.py)
COUNT = re.compile(r"^[0-9]{1,6}$")


class WebhooksPage:
    def __init__(self, gate: Gate, admin: WebhookAdmin | None) -> None:
        self.gate, self.admin = gate, admin

    async def show(self, request: Request, visitor: Visitor) -> Response:
        params = request.query_params
        replayed, count = params.get("replayed", ""), params.get("endpoints", "")
        notice = None
        if EVENT_ID.match(replayed) and COUNT.match(count):  # "²".isdigit(), int("²") fails
            notice = f"Event {replayed} queued again for {int(count)} endpoint(s)."
        return await self._page(visitor, params.get("endpoint", ""), notice=notice)

    async def replay(self, request: Request, visitor: Visitor) -> Response:
        form = await read_form(request)
        assert form is not None  # the gate read it to check its token
        if self.admin is None:
            return self.gate.error(404, "Webhooks are not served here", visitor)
        back = local_path(field(form, "next"), f"{PREFIX}/webhooks")
        glue = "&" if "?" in back else "?"
        event_ref = (field(form, "event") or "").strip()[:40]
        try:
            sent_id, endpoints = await self.admin.replay(visitor.key, event_ref)
        except RequestError as exc:  # answered here: the message never rides in a URL
            hook_id = dict(parse_qsl(urlsplit(back).query)).get("endpoint", "")
            status = 404 if exc.code == "not_found" else 422
            return await self._page(visitor, hook_id, problem=exc.message, status=status)
        done = urlencode({"replayed": sent_id, "endpoints": endpoints})
        return RedirectResponse(f"{back}{glue}{done}", 303)

    async def _page(
        self,
        visitor: Visitor,
        hook_id: str,
        notice: str | None = None,
        problem: str | None = None,
        status: int = 200,
    ) -> Response:
        hook_id = hook_id[:64]
        if self.admin is None:
            return self._render(visitor, enabled=False)
        hooks = await self.admin.list_for(visitor.key)
        current, attempts = None, []
        if hook_id:
            try:
                current = await self.admin.get(visitor.key, hook_id)
                attempts = await self.admin.attempts(visitor.key, hook_id, ATTEMPTS_SHOWN)
            except RequestError:  # its id is not echoed: the URL is anyone's to write
                problem = problem or "No such endpoint: it may have been deleted."
        here = f"{PREFIX}/webhooks"
        if current is not None:
            here += f"?{urlencode({'endpoint': current.id})}"
        return self._render(
            visitor,
            status=status,
            hooks=hooks,
            current=current,
            attempts=attempts,
            notice=notice,
            problem=problem,
            here=here,
        )

    def _render(
        self, visitor: Visitor, enabled: bool = True, status: int = 200, **context: Any
    ) -> Response:
        defaults: dict[str, Any] = dict(
            hooks=[], current=None, attempts=[], notice=None, problem=None, here=""
        )
        defaults.update(context)
        return self.gate.pages.render(
            "webhooks.html",
            status=status,
            visitor=visitor,
            nav="webhooks",
            enabled=enabled,
            **defaults,
        )
