"""Sending domains over HTTP (admin scope): add, list, get, verify, rotate, retire a
key, delete. Adding answers the DNS records to publish; private keys never appear."""

from __future__ import annotations

from collections.abc import Awaitable

from fastapi import APIRouter
from starlette.requests import Request

from mailgate.domains import records
from mailgate.domains.manage import DomainAdmin
from mailgate.http import models as m
from mailgate.http.auth import Auth
from mailgate.http.messages import utc
from mailgate.http.openapi import ERRORS, request_body
from mailgate.http.send import parse_json, read_body
from mailgate.models import Domain, RecordCheck, Scope

JSON_TYPES = ("application/json",)
MAX_BODY = 4096


class Domains:
    def __init__(self, auth: Auth, admin: DomainAdmin) -> None:
        self.auth, self.admin = auth, admin

    async def add(self, request: Request) -> m.DomainOut:
        await self.auth.key_for(request, Scope.ADMIN)
        body, _ = await read_body(request, JSON_TYPES, MAX_BODY)
        req = parse_json(m.DomainRequest, body)
        return await self._answer(self.admin.add(req.name))

    async def list_domains(self, request: Request) -> m.DomainList:
        await self.auth.key_for(request, Scope.ADMIN)
        domains = await self.admin.store.list_domains()
        return m.DomainList(data=[domain_out(d, self.admin.policy) for d in domains])

    async def get(self, request: Request, name: str) -> m.DomainOut:
        await self.auth.key_for(request, Scope.ADMIN)
        return await self._answer(self.admin.get(name))

    async def verify(self, request: Request, name: str) -> m.DomainOut:
        await self.auth.key_for(request, Scope.ADMIN)
        return await self._answer(self.admin.verify(name))

    async def rotate(self, request: Request, name: str) -> m.DomainOut:
        await self.auth.key_for(request, Scope.ADMIN)
        return await self._answer(self.admin.rotate(name))

    async def retire(self, request: Request, name: str, selector: str) -> m.DomainOut:
        await self.auth.key_for(request, Scope.ADMIN)
        return await self._answer(self.admin.retire(name, selector))

    async def delete(self, request: Request, name: str) -> dict[str, bool]:
        await self.auth.key_for(request, Scope.ADMIN)
        await self.admin.remove(name)
        return {"deleted": True}

    async def _answer(self, work: Awaitable[Domain]) -> m.DomainOut:
        return domain_out(await work, self.admin.policy)  # RequestError: the app's handler


def domain_out(domain: Domain, policy: records.Policy) -> m.DomainOut:
    signing = {k.selector for k in records.signing_keys(domain)} if domain.sending else set()
    out = []
    for r in records.records(domain, policy):
        check = domain.checks.get(r.id, RecordCheck())
        out.append(
            m.RecordOut(
                id=r.id,
                purpose=r.purpose,
                type=r.type,
                name=r.name,
                value=r.value,
                status=check.status,
                found=list(check.found),
                selector=r.selector or None,
                algorithm=r.algorithm or None,
                retired=r.retired,
                signing=r.selector in signing,
            )
        )
    status = "verified" if domain.sending else "pending" if domain.checked_at is None else "failed"
    return m.DomainOut(
        name=domain.name,
        status=status,
        sending=domain.sending,
        created_at=utc(domain.created_at),
        checked_at=utc(domain.checked_at) if domain.checked_at is not None else None,
        records=out,
    )


def router(domains: Domains) -> APIRouter:
    r = APIRouter()
    routes = (
        ("POST", "", domains.add, m.DomainOut, "Add a sending domain: the records to publish"),
        ("GET", "", domains.list_domains, m.DomainList, "List sending domains"),
        ("GET", "/{name}", domains.get, m.DomainOut, "One domain with its records' status"),
        ("POST", "/{name}/verify", domains.verify, m.DomainOut, "Check its records in DNS now"),
        ("POST", "/{name}/rotate", domains.rotate, m.DomainOut, "New DKIM keys, new selector"),
        (
            "POST",
            "/{name}/keys/{selector}/retire",
            domains.retire,
            m.DomainOut,
            "Stop using an old key",
        ),
        ("DELETE", "/{name}", domains.delete, None, "Remove the domain and its keys"),
    )
    for method, path, endpoint, answer, summary in routes:
        extra = request_body(m.DomainRequest) if endpoint == domains.add else None
        r.add_api_route(
            "/v1/domains" + path,
            endpoint,
            methods=[method],
            response_model=answer,
            responses=ERRORS,
            openapi_extra=extra,
            status_code=201 if endpoint == domains.add else 200,
            summary=summary,
        )
    return r
