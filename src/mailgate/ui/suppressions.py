"""The suppressions page: the list (filtered by reason and address prefix, 50 a page by
the API's own cursor), a form to add an entry and remove on each, carried out as the API
does it (http/suppressions.py: its cursor, its rule on which keys may change what; the
checks of suppressions.py; the store's own statements)."""

from __future__ import annotations

import time
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailgate.http.errors import ApiError
from mailgate.http.suppressions import decode_cursor, encode_cursor, may_change
from mailgate.models import Suppression, SuppressionReason
from mailgate.store import Store
from mailgate.suppressions import entry_problem, normalize
from mailgate.ui.gate import PREFIX, Gate, Visitor, field, read_form

PAGE_SIZE = 50


class SuppressionsPage:
    def __init__(self, gate: Gate, store: Store) -> None:
        self.gate, self.store = gate, store

    async def show(self, request: Request, visitor: Visitor) -> Response:
        done = request.query_params.get("done", "")
        notice = {"added": "Added to the suppression list.", "removed": "Removed."}.get(done)
        return await self._page(request, visitor, notice=notice)

    async def add(self, request: Request, visitor: Visitor) -> Response:
        form = await read_form(request)
        assert form is not None  # the gate read it to check its token
        values = {k: (field(form, k) or "").strip()[:320] for k in ("address", "domain", "reason")}
        try:
            reason = SuppressionReason(values["reason"] or "manual")
        except ValueError:
            return await self._page(request, visitor, problem="reason: not a reason", status=422)
        scope = normalize(values["domain"])
        entry = Suppression(normalize(values["address"]), reason, time.time(), scope)
        problem = entry_problem(entry)
        if problem is None:
            try:
                may_change(visitor.key, scope, "domain")
            except ApiError as exc:
                problem = (exc.field or "key", exc.message)
        if problem is not None:
            text = f"{problem[0]}: {problem[1]}"
            return await self._page(request, visitor, problem=text, form=values, status=422)
        await self.store.put_suppressions([entry])
        return RedirectResponse(f"{PREFIX}/suppressions?done=added", 303)

    async def remove(self, request: Request, visitor: Visitor) -> Response:
        form = await read_form(request)
        assert form is not None
        address = normalize(field(form, "address") or "")
        scope = normalize(field(form, "domain") or "")
        try:
            may_change(visitor.key, scope, "domain")
        except ApiError as exc:
            return self.gate.error(403, exc.message, visitor)
        if not await self.store.delete_suppression(address, scope):
            return self.gate.error(404, f"{address} is not suppressed", visitor)
        return RedirectResponse(f"{PREFIX}/suppressions?done=removed", 303)

    async def _page(
        self,
        request: Request,
        visitor: Visitor,
        notice: str | None = None,
        problem: str | None = None,
        form: dict[str, str] | None = None,
        status: int = 200,
    ) -> Response:
        params = request.query_params
        reason = params.get("reason", "")
        prefix = params.get("prefix", "").strip()[:320]
        after, cursor = None, params.get("cursor", "")[:1000]
        if reason not in {r.value for r in SuppressionReason}:
            reason = ""
        if cursor:
            try:
                after = decode_cursor(cursor)
            except ApiError:
                problem, cursor = problem or "Not a page this list gave: showing the first.", ""
        entries = await self.store.list_suppressions(reason, normalize(prefix), after, PAGE_SIZE)
        older = None
        if len(entries) == PAGE_SIZE:
            query = {"reason": reason, "prefix": prefix, "cursor": encode_cursor(entries[-1])}
            older = f"{PREFIX}/suppressions?{urlencode(query)}"
        return self.gate.pages.render(
            "suppressions.html",
            status=status,
            visitor=visitor,
            nav="suppressions",
            entries=entries,
            reasons=[r.value for r in SuppressionReason],
            reason=reason,
            prefix=prefix,
            paged=bool(cursor),
            older=older,
            notice=notice,
            problem=problem,
            form=form or {"address": "", "domain": "", "reason": "manual"},
        )
