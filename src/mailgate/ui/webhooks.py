"""The webhooks page: every endpoint (its URL, event types, state), one endpoint's
attempt log (newest first), and replay of an event (by its id, from the log or typed
in): carried out by the API's own WebhookAdmin (events/endpoints.py), which checks
ownership, builds the event's payload and queues it for every endpoint that takes it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailgate.errors import RequestError
from mailgate.events.endpoints import WebhookAdmin
from mailgate.ui.gate import PREFIX, Gate, Visitor, field, local_path, read_form

ATTEMPTS_SHOWN = 100


class WebhooksPage:
    def __init__(self, gate: Gate, admin: WebhookAdmin | None) -> None:
        self.gate, self.admin = gate, admin

    async def show(self, request: Request, visitor: Visitor) -> Response:
        hook_id = request.query_params.get("endpoint", "")[:64]
        if self.admin is None:
            return self._render(visitor, enabled=False)
        hooks = await self.admin.list_for(visitor.key)
        current, attempts, problem = None, [], request.query_params.get("problem", "")[:300]
        if hook_id:
            try:
                current = await self.admin.get(visitor.key, hook_id)
                attempts = await self.admin.attempts(visitor.key, hook_id, ATTEMPTS_SHOWN)
            except RequestError as exc:
                problem = exc.message
        replayed = request.query_params.get("replayed", "")[:40]
        count = request.query_params.get("endpoints", "")
        notice = None
        if replayed and count.isdigit():
            notice = f"Event {replayed} queued again for {count} endpoint(s)."
        here = f"{PREFIX}/webhooks" + (f"?{urlencode({'endpoint': hook_id})}" if hook_id else "")
        return self._render(
            visitor,
            hooks=hooks,
            current=current,
            attempts=attempts,
            notice=notice,
            problem=problem or None,
            here=here,
        )

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
        except RequestError as exc:
            return RedirectResponse(f"{back}{glue}{urlencode({'problem': exc.message})}", 303)
        done = urlencode({"replayed": sent_id, "endpoints": endpoints})
        return RedirectResponse(f"{back}{glue}{done}", 303)

    def _render(self, visitor: Visitor, enabled: bool = True, **context: Any) -> Response:
        defaults: dict[str, Any] = dict(
            hooks=[], current=None, attempts=[], notice=None, problem=None, here=""
        )
        defaults.update(context)
        return self.gate.pages.render(
            "webhooks.html", visitor=visitor, nav="webhooks", enabled=enabled, **defaults
        )
