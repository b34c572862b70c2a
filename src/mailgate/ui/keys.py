"""The API keys page: every key, a form to make one (its secret shown once, on the
answer to that POST, never in a URL or a later page), and revoke. The form is read into
the API's own request shape and checked and carried out by the API's own functions
(http/keys.py), so a key made here is one the API would make."""

from __future__ import annotations

import pydantic
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailgate import keys
from mailgate.http import models as m
from mailgate.http.auth import Auth
from mailgate.http.keys import new_key_problem, revoke
from mailgate.models import ApiKey, Scope
from mailgate.store import Store
from mailgate.ui.gate import PREFIX, Gate, Visitor, read_form


class KeysPage:
    def __init__(self, gate: Gate, auth: Auth, store: Store) -> None:
        self.gate, self.auth, self.store = gate, auth, store

    async def show(self, request: Request, visitor: Visitor) -> Response:
        done = request.query_params.get("done", "")
        return await self._page(visitor, notice="Key revoked." if done == "revoked" else None)

    async def create(self, request: Request, visitor: Visitor) -> Response:
        form = await read_form(request)
        assert form is not None  # the gate read it to check its token
        domains = str(form.get("sender_domains") or "").replace(",", " ").split()
        try:
            req = m.KeyRequest.model_validate(
                {
                    "name": str(form.get("name") or "").strip(),
                    "scopes": [s for s in form.getlist("scopes") if isinstance(s, str)],
                    "sender_domains": domains,
                    "sandbox": form.get("sandbox") == "on",
                }
            )
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return await self._page(visitor, problem=f"{where}: {first['msg']}", status=422)
        problem = new_key_problem(req.scopes, req.sandbox, req.sender_domains)
        if problem is not None:
            return await self._page(visitor, problem=f"{problem[1]}: {problem[0]}", status=422)
        key, secret = await keys.create_key(
            self.store, req.name, req.scopes, req.sender_domains, req.sandbox
        )
        return await self._page(visitor, made=(key, secret), status=201)

    async def revoke(self, request: Request, visitor: Visitor) -> Response:
        key_id = request.path_params["key_id"]
        if not await revoke(self.auth, self.store, key_id):
            return self.gate.error(404, f"No active key {key_id}", visitor)
        return RedirectResponse(f"{PREFIX}/keys?done=revoked", 303)

    async def _page(
        self,
        visitor: Visitor,
        made: tuple[ApiKey, str] | None = None,
        problem: str | None = None,
        notice: str | None = None,
        status: int = 200,
    ) -> Response:
        return self.gate.pages.render(
            "keys.html",
            status=status,
            visitor=visitor,
            nav="keys",
            keys=await self.store.list_keys(),
            scopes=[s.value for s in Scope],
            made=made,
            problem=problem,
            notice=notice,
        )
