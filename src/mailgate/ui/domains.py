"""The sending domains page: each domain with its status and DNS records (what to
publish, what DNS answered at the last check, each record's status), a form to add one
and **Verify** (check its records in DNS now): carried out by the API's own DomainAdmin
(domains/manage.py) and shown as the API answers it (http/domains.py domain_out)."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailgate.domains.manage import DomainAdmin
from mailgate.errors import RequestError
from mailgate.http.domains import domain_out
from mailgate.store import Store
from mailgate.ui.gate import PREFIX, Gate, Visitor, field, read_form


class DomainsPage:
    def __init__(self, gate: Gate, store: Store, admin: DomainAdmin | None) -> None:
        self.gate, self.store, self.admin = gate, store, admin

    async def show(self, request: Request, visitor: Visitor) -> Response:
        params = request.query_params
        done = params.get("done", "")
        notice = {
            "added": "Domain added: publish its records, then verify.",
            "verified": "Checked in DNS now.",
        }.get(done)
        # no problem= here: a URL's text is never shown as the page's own (webhooks.py)
        return await self._page(visitor, notice=notice)

    async def add(self, request: Request, visitor: Visitor) -> Response:
        form = await read_form(request)
        assert form is not None  # the gate read it to check its token
        if self.admin is None:
            return self.gate.error(404, "Sending domains are not managed here", visitor)
        try:
            domain = await self.admin.add((field(form, "name") or "").strip()[:255])
        except RequestError as exc:
            return await self._page(visitor, problem=exc.message, status=422)
        return RedirectResponse(
            f"{PREFIX}/domains?{urlencode({'done': 'added'})}#d-{domain.name}", 303
        )

    async def verify(self, request: Request, visitor: Visitor) -> Response:
        name = request.path_params["name"]
        if self.admin is None:
            return self.gate.error(404, "Sending domains are not managed here", visitor)
        try:
            domain = await self.admin.verify(name)
        except RequestError as exc:
            return self.gate.error(404, exc.message, visitor)
        return RedirectResponse(f"{PREFIX}/domains?done=verified#d-{domain.name}", 303)

    async def _page(
        self,
        visitor: Visitor,
        notice: str | None = None,
        problem: str | None = None,
        status: int = 200,
    ) -> Response:
        domains = []
        if self.admin is not None:
            policy = self.admin.policy
            domains = [domain_out(d, policy) for d in await self.store.list_domains()]
        return self.gate.pages.render(
            "domains.html",
            status=status,
            visitor=visitor,
            nav="domains",
            enabled=self.admin is not None,
            domains=domains,
            notice=notice,
            problem=problem or None,
        )
