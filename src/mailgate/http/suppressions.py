"""The suppression list over HTTP: list (filter by reason and address prefix, cursor
paging), add one or many, remove. Reading takes the read scope, changing it the send
scope. A key limited to sender domains sees the unscoped entries and its domains', and
changes only entries scoped to one of its domains (an unscoped entry stops every
sender's mail); a sandbox key changes nothing (test mail must not decide what real mail
reaches)."""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from fastapi import APIRouter, Query
from starlette.requests import Request

from mailgate.http import models as m
from mailgate.http.auth import Auth
from mailgate.http.errors import ApiError, invalid
from mailgate.http.messages import utc
from mailgate.http.openapi import ERRORS, request_body
from mailgate.http.send import parse_json, read_body
from mailgate.models import ApiKey, Scope, Suppression, SuppressionReason
from mailgate.store import Store
from mailgate.suppressions import entry_problem, normalize

JSON_TYPES = ("application/json",)
MAX_BODY = 1 << 20  # 1,000 entries fit easily


def suppression_out(s: Suppression) -> m.SuppressionOut:
    return m.SuppressionOut(
        address=s.address,
        reason=s.reason,
        domain=s.scope or None,
        created_at=utc(s.created_at),
        message_id=s.message_id,
    )


def encode_cursor(s: Suppression) -> str:
    return base64.urlsafe_b64encode(json.dumps([s.address, s.scope]).encode()).decode()


def decode_cursor(text: str) -> tuple[str, str]:
    try:
        address, scope = json.loads(base64.urlsafe_b64decode(text.encode()))
        if isinstance(address, str) and isinstance(scope, str):
            return address, scope
    except (ValueError, binascii.Error, TypeError):
        pass
    raise invalid("Not a cursor this API gave", "cursor")


def may_change(key: ApiKey, scope: str, field: str) -> None:
    if key.sandbox:
        raise ApiError(403, "forbidden", "A sandbox key cannot change the suppression list")
    if key.sender_domains and not (scope and key.allows_sender(scope)):
        reason = "This key may change only entries scoped to its sender domains"
        raise ApiError(403, "forbidden", reason, field)


class Suppressions:
    def __init__(self, auth: Auth, store: Store) -> None:
        self.auth, self.store = auth, store

    async def list_suppressions(
        self,
        request: Request,
        reason: SuppressionReason | None = None,
        prefix: str = Query("", max_length=320, description="Addresses starting with this"),
        cursor: str | None = Query(None, max_length=1000),
        limit: int = Query(100, ge=1, le=1000),
    ) -> m.SuppressionList:
        key = await self.auth.key_for(request, Scope.READ)
        after = decode_cursor(cursor) if cursor else None
        found = await self.store.list_suppressions(
            reason.value if reason else "", normalize(prefix), after, limit
        )
        next_cursor = encode_cursor(found[-1]) if len(found) == limit else None
        if key.sender_domains:  # not another sender domain's entries (a page may be short)
            found = [s for s in found if not s.scope or key.allows_sender(s.scope)]
        return m.SuppressionList(data=[suppression_out(s) for s in found], next_cursor=next_cursor)

    async def add(self, request: Request) -> m.SuppressionList:
        key = await self.auth.key_for(request, Scope.SEND)
        body, _ = await read_body(request, JSON_TYPES, MAX_BODY)
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            raise ApiError(400, "invalid_json", "The body is not JSON") from None
        if isinstance(parsed, dict) and "address" in parsed:  # one entry, as itself
            items, prefix = [parse_json(m.SuppressionIn, body)], ""
        else:
            items, prefix = parse_json(m.SuppressionsRequest, body).suppressions, "suppressions"
        now = time.time()
        entries = []
        for i, item in enumerate(items):
            at = f"{prefix}[{i}]." if prefix else ""
            scope = normalize(item.domain or "")
            entry = Suppression(normalize(item.address), item.reason, now, scope)
            problem = entry_problem(entry)
            if problem is not None:
                raise invalid(problem[1], at + problem[0])
            may_change(key, scope, at + "domain")
            entries.append(entry)
        await self.store.put_suppressions(entries)
        return m.SuppressionList(data=[suppression_out(e) for e in entries], next_cursor=None)

    async def remove(
        self,
        request: Request,
        address: str,
        domain: str | None = Query(None, max_length=253, description="Only this scope"),
    ) -> dict[str, Any]:
        key = await self.auth.key_for(request, Scope.SEND)
        scope = None if domain is None else normalize(domain)
        if scope is None and key.sender_domains:
            raise ApiError(403, "forbidden", "Name the domain scope to remove", "domain")
        may_change(key, scope or "", "domain")
        removed = await self.store.delete_suppression(address, scope)
        if not removed:
            raise ApiError(404, "not_found", f"{address} is not suppressed", "address")
        return {"address": normalize(address), "removed": removed}


def router(s: Suppressions) -> APIRouter:
    r = APIRouter()
    r.add_api_route(
        "/v1/suppressions",
        s.list_suppressions,
        methods=["GET"],
        response_model=m.SuppressionList,
        responses=ERRORS,
        summary="List suppressed addresses (by address, then domain scope)",
    )
    r.add_api_route(
        "/v1/suppressions",
        s.add,
        methods=["POST"],
        response_model=m.SuppressionList,
        responses=ERRORS,
        status_code=201,
        openapi_extra=request_body(m.SuppressionsRequest),
        summary="Add one entry ({address, ...}) or many ({suppressions: [...]})",
    )
    r.add_api_route(
        "/v1/suppressions/{address}",
        s.remove,
        methods=["DELETE"],
        responses=ERRORS,
        summary="Remove an address (every scope, or ?domain= one)",
    )
    return r
