"""API keys over HTTP (admin scope): create (the secret shown once), list, revoke. The
CLI's `mailgate keys` does the same on the server's machine. A revoked key stops at
once in the process that revoked it, and within AUTH_CACHE_SECONDS in the others; its
webhook endpoints are disabled in the same transaction."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from mailgate import keys
from mailgate.addresses import domain_problem
from mailgate.http import models as m
from mailgate.http.auth import Auth
from mailgate.http.errors import NO_STORE, ApiError, invalid
from mailgate.http.messages import utc
from mailgate.http.openapi import ERRORS, request_body
from mailgate.http.send import parse_json, read_body
from mailgate.models import ApiKey, Scope
from mailgate.store import Store

JSON_TYPES = ("application/json",)


def key_out(key: ApiKey, secret: str | None = None) -> m.KeyOut:
    return m.KeyOut(
        id=key.id,
        name=key.name,
        scopes=sorted(key.scopes),
        sender_domains=list(key.sender_domains),
        sandbox=key.sandbox,
        created_at=utc(key.created_at),
        revoked_at=utc(key.revoked_at) if key.revoked_at else None,
        secret=secret,
    )


def new_key_problem(
    scopes: Sequence[Scope], sandbox: bool, sender_domains: Sequence[str]
) -> tuple[str, str] | None:
    """Why a key cannot be made so: (the problem, the field at fault), or None. The
    API's create and the dashboard's ask this."""
    problem = keys.sandbox_problem(scopes, sandbox)
    if problem is not None:
        return problem, "scopes"
    for i, domain in enumerate(sender_domains):
        problem = domain_problem(domain.strip().lower())
        if problem is not None or domain.strip().startswith("["):
            return problem or "Not a domain", f"sender_domains[{i}]"
    return None


async def revoke(auth: Auth, store: Store, key_id: str) -> bool:
    """Revoke an active key (False: no such active key) and forget it in this process
    at once (the API's revoke and the dashboard's)."""
    if not await store.revoke_key(key_id, time.time()):
        return False
    auth.forget(key_id)
    return True


class Keys:
    def __init__(self, auth: Auth, store: Store) -> None:
        self.auth, self.store = auth, store

    async def create(self, request: Request, response: Response) -> m.KeyOut:
        await self.auth.key_for(request, Scope.ADMIN)
        body, _ = await read_body(request, JSON_TYPES, 8192)
        req = parse_json(m.KeyRequest, body)
        problem = new_key_problem(req.scopes, req.sandbox, req.sender_domains)
        if problem is not None:
            raise invalid(*problem)
        key, secret = await keys.create_key(
            self.store, req.name, req.scopes, req.sender_domains, req.sandbox
        )
        response.headers["Cache-Control"] = NO_STORE
        return key_out(key, secret)

    async def list_keys(self, request: Request) -> m.KeyList:
        await self.auth.key_for(request, Scope.ADMIN)
        return m.KeyList(data=[key_out(k) for k in await self.store.list_keys()])

    async def revoke(self, request: Request, key_id: str) -> dict[str, Any]:
        await self.auth.key_for(request, Scope.ADMIN)
        if not await revoke(self.auth, self.store, key_id):
            raise ApiError(404, "not_found", f"No active key {key_id}", "key_id")
        return {"id": key_id, "revoked": True}


def router(k: Keys) -> APIRouter:
    r = APIRouter()
    r.add_api_route(
        "/v1/keys",
        k.create,
        methods=["POST"],
        response_model=m.KeyOut,
        responses=ERRORS,
        status_code=201,
        openapi_extra=request_body(m.KeyRequest),
        summary="Create a key (its secret shown once; sandbox: simulated, never sent)",
    )
    r.add_api_route(
        "/v1/keys", k.list_keys, methods=["GET"], response_model=m.KeyList, responses=ERRORS
    )
    r.add_api_route(
        "/v1/keys/{key_id}", k.revoke, methods=["DELETE"], responses=ERRORS, summary="Revoke"
    )
    return r
