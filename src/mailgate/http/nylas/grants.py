"""Grants over Nylas v3: a mailbox connected with its IMAP and SMTP settings and
credentials (Nylas' "custom authentication", provider "imap"), listed, read,
re-authenticated and deleted. Each key sees its own grants; an admin key every grant.

    POST   /v3/connect/custom   {"provider": "imap", "settings": {...}}  (the SDK's
    POST   /v3/grants           auth.custom_authentication; /v3/grants is the same)
    GET    /v3/grants           list
    GET    /v3/grants/{id}      one
    PATCH  /v3/grants/{id}      {"settings": {...}}: new settings and/or credentials
    DELETE /v3/grants/{id}

The connection is checked before anything is stored (IMAP login, SMTP AUTH): a refused
password is a 401, an unreachable server or a failed TLS handshake a 502, each naming
the server and the cause. Credentials are never answered nor logged.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from starlette.responses import Response

from mailgate.addresses import address_problem
from mailgate.http.errors import ApiError
from mailgate.http.nylas.shapes import answer, deleted, grant_json, page
from mailgate.mailboxes.grants import GrantAdmin
from mailgate.mailboxes.models import (
    AuthMethod,
    Credentials,
    Grant,
    GrantStatus,
    Server,
    TlsMode,
)
from mailgate.models import ApiKey, new_id

SECURITY = {
    "ssl": TlsMode.IMPLICIT,
    "tls": TlsMode.IMPLICIT,
    "implicit": TlsMode.IMPLICIT,
    "starttls": TlsMode.STARTTLS,
    "none": TlsMode.NONE,
    "plain": TlsMode.NONE,
}
DEFAULT_PORTS = {
    "imap": {TlsMode.IMPLICIT: 993, TlsMode.STARTTLS: 143, TlsMode.NONE: 143},
    "smtp": {TlsMode.IMPLICIT: 465, TlsMode.STARTTLS: 587, TlsMode.NONE: 587},
}
ALIASES = {  # Nylas' IMAP setting names, and shorter ones
    "imap_username": "username",
    "imap_password": "password",
    "imap_tls": "imap_security",
    "smtp_tls": "smtp_security",
}
SETTINGS = frozenset(
    {
        "email",
        "username",
        "password",
        "access_token",
        "imap_host",
        "imap_port",
        "imap_security",
        "smtp_host",
        "smtp_port",
        "smtp_security",
        "server_files_sent",
        "smtp_username",  # accepted when it is the same login (one user name for both)
        "smtp_password",
    }
)


def bad(message: str, field: str) -> ApiError:
    return ApiError(400, "invalid_field", message, field)


def read_settings(body: Any, create: bool) -> dict[str, Any]:
    """The settings object, names unaliased; unknown ones refused by name."""
    if not isinstance(body, dict):
        raise bad("The body must be a JSON object", "body")
    if create:
        provider = body.get("provider")
        if provider != "imap":
            raise bad(
                f"mailgate connects IMAP mailboxes: provider must be 'imap', not {provider!r}",
                "provider",
            )
    settings = body.get("settings")
    if settings is None and not create:
        settings = {}
    if not isinstance(settings, dict):
        raise bad("settings must be an object", "settings")
    out: dict[str, Any] = {}
    for name, value in settings.items():
        key = ALIASES.get(name, name)
        if key not in SETTINGS:
            raise bad(f"unknown setting {name[:40]!r}", f"settings.{name[:40]}")
        out[key] = value
    if "smtp_username" in out and "username" in out and out["smtp_username"] != out["username"]:
        raise bad("mailgate logs in to both servers with one user name", "settings.smtp_username")
    if "smtp_username" in out:
        out.setdefault("username", out.pop("smtp_username"))
    if "smtp_password" in out:
        if "password" in out and out["smtp_password"] != out["password"]:
            raise bad(
                "mailgate logs in to both servers with one password", "settings.smtp_password"
            )
        out.setdefault("password", out.pop("smtp_password"))
    return {k: v for k, v in out.items() if v is not None}


def text_setting(s: dict[str, Any], name: str, default: str | None = None) -> str:
    value = s.get(name, default)
    if not isinstance(value, str) or not value.strip() or len(value) > 512:
        raise bad("required: a non-empty string", f"settings.{name}")
    if any(c in value for c in "\r\n\0"):
        raise bad("must be one line", f"settings.{name}")
    return value.strip()


def server_setting(s: dict[str, Any], kind: str, old: Server | None) -> Server:
    security = s.get(f"{kind}_security")
    if security is None:
        tls = old.tls if old else TlsMode.IMPLICIT
    elif not isinstance(security, str) or security.lower() not in SECURITY:
        raise bad("must be ssl, starttls or none", f"settings.{kind}_security")
    else:
        tls = SECURITY[security.lower()]
    host = text_setting(s, f"{kind}_host", old.host if old else None)
    port = s.get(f"{kind}_port", old.port if old and security is None else DEFAULT_PORTS[kind][tls])
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise bad("must be a port number from 1 to 65535", f"settings.{kind}_port")
    return Server(host, port, tls)


def credentials_of(s: dict[str, Any]) -> Credentials | None:
    if "password" in s and "access_token" in s:
        raise bad("give a password or an access_token, not both", "settings.access_token")
    if "access_token" in s:
        return Credentials(AuthMethod.XOAUTH2, text_setting(s, "access_token"))
    if "password" in s:
        password = s["password"]
        if not isinstance(password, str) or not password or len(password) > 4096:
            raise bad("required: a non-empty string", "settings.password")
        return Credentials(AuthMethod.PASSWORD, password)
    return None


def grant_from(s: dict[str, Any], key: ApiKey, old: Grant | None, now: float) -> Grant:
    username = text_setting(s, "username", old.username if old else None)
    email = s.get("email", old.email if old else (username if "@" in username else None))
    if not isinstance(email, str):
        raise bad("required: the mailbox's address", "settings.email")
    problem = address_problem(email)
    if problem is not None:
        raise bad(problem, "settings.email")
    files = s.get("server_files_sent", old.server_files_sent if old else False)
    if not isinstance(files, bool):
        raise bad("must be true or false", "settings.server_files_sent")
    return Grant(
        id=old.id if old else new_id(now),
        api_key_id=old.api_key_id if old else key.id,
        email=email,
        username=username,
        auth=old.auth if old else AuthMethod.PASSWORD,
        imap=server_setting(s, "imap", old.imap if old else None),
        smtp=server_setting(s, "smtp", old.smtp if old else None),
        status=old.status if old else GrantStatus.VALID,
        created_at=old.created_at if old else now,
        updated_at=now,
        error=old.error if old else None,
        synced_at=old.synced_at if old else None,
        server_files_sent=files,
    )


class GrantRoutes:
    def __init__(self, admin: GrantAdmin) -> None:
        self.admin = admin

    async def create(self, key: ApiKey, body: Any) -> Response:
        s = read_settings(body, create=True)
        creds = credentials_of(s)
        if creds is None:
            raise bad("required: a password or an access_token", "settings.password")
        grant = replace(grant_from(s, key, None, time.time()), auth=creds.auth)
        return answer(grant_json(await self.admin.create(grant, creds)))

    async def list(self, key: ApiKey) -> Response:
        return page([grant_json(g) for g in await self.admin.list(key)], None)

    async def get(self, key: ApiKey, grant_id: str) -> Response:
        return answer(grant_json(await self.admin.visible(grant_id, key)))

    async def update(self, key: ApiKey, grant_id: str, body: Any) -> Response:
        old = await self.admin.visible(grant_id, key)
        s = read_settings(body, create=False)
        creds = credentials_of(s)
        grant = grant_from(s, key, old, time.time())
        if creds is not None:
            grant = replace(grant, auth=creds.auth)
        return answer(grant_json(await self.admin.update(grant, creds)))

    async def delete(self, key: ApiKey, grant_id: str) -> Response:
        await self.admin.delete(await self.admin.visible(grant_id, key))
        return deleted()
