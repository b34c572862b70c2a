"""A grant's credentials sealed for the store and opened for a connection.

The sealed blob is secretbox.py's token of a small JSON object {"auth", "secret"}: the
store keeps only that, the API never returns it, and Credentials' repr hides the
secret, so a log line or a traceback cannot show it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from mailgate.mailboxes.models import AuthMethod, Credentials, Grant, GrantStatus
from mailgate.models import ApiKey, Scope
from mailgate.secretbox import SecretBox
from mailgate.store import Store

# a connection check: None, or why it failed in one sentence (never the secret)
Check = Callable[[Grant, Credentials], Awaitable[str | None]]


def seal(box: SecretBox, creds: Credentials) -> str:
    return box.seal(json.dumps({"auth": creds.auth.value, "secret": creds.secret}).encode())


def unseal(box: SecretBox, sealed: str) -> Credentials:
    data = json.loads(box.unseal(sealed))
    return Credentials(auth=AuthMethod(data["auth"]), secret=str(data["secret"]))


class GrantError(Exception):
    """A grant cannot be made or changed: `status` (400 a setting, 401 the credentials
    refused, 404 no such grant, 502 a server unreachable or its TLS failing), the
    setting at fault, and one sentence that never carries a secret."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class GrantAdmin:
    """Grants made, re-authenticated and removed, each connection checked first (IMAP
    by the sync's `imap_check`, SMTP submission by `smtp_check`); owned by the key that
    made it (an admin key sees every grant)."""

    def __init__(
        self,
        store: Store,
        box: SecretBox,
        smtp_check: Check,
        imap_check: Check | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.box, self.clock = store, box, clock
        self.smtp_check, self.imap_check = smtp_check, imap_check

    async def visible(self, grant_id: str, key: ApiKey) -> Grant:
        """The grant if this key may see it; 404 otherwise (another key's grant is not
        told apart from a missing one)."""
        grant = await self.store.get_grant(grant_id) if len(grant_id) <= 64 else None
        if grant is None or not (key.has(Scope.ADMIN) or grant.api_key_id == key.id):
            raise GrantError(404, f"Grant {grant_id[:64]} not found", "grant_id")
        return grant

    async def list(self, key: ApiKey) -> list[Grant]:
        return await self.store.grants(None if key.has(Scope.ADMIN) else key.id)

    async def create(self, grant: Grant, creds: Credentials) -> Grant:
        grant = await self._checked(grant, creds)
        await self.store.add_grant(grant, seal(self.box, creds))
        return grant

    async def update(self, grant: Grant, creds: Credentials | None) -> Grant:
        """New settings and/or credentials, checked with the credentials they will use
        (re-authentication: a grant marked invalid is valid again once they work)."""
        sealed = await self.store.grant_credentials(grant.id)
        if sealed is None:
            raise GrantError(404, f"Grant {grant.id} not found", "grant_id")
        grant = await self._checked(grant, creds or unseal(self.box, sealed))
        grant = replace(grant, updated_at=self.clock())
        if not await self.store.update_grant(grant, seal(self.box, creds) if creds else None):
            raise GrantError(404, f"Grant {grant.id} not found", "grant_id")
        return grant

    async def delete(self, grant: Grant) -> None:
        await self.store.delete_grant(grant.id)

    async def credentials(self, grant_id: str) -> Credentials | None:
        sealed = await self.store.grant_credentials(grant_id)
        return None if sealed is None else unseal(self.box, sealed)

    async def _checked(self, grant: Grant, creds: Credentials) -> Grant:
        """Both servers checked side by side; the first failure is the answer."""
        checks = [self.smtp_check(grant, creds)]
        if self.imap_check is not None:
            checks.insert(0, self.imap_check(grant, creds))
        for problem in await asyncio.gather(*checks):
            if problem is not None:
                raise GrantError(_status_of(problem), problem)
        return replace(grant, status=GrantStatus.VALID, error=None)


def _status_of(problem: str) -> int:
    """401 when the server refused the credentials, else 502 (it could not be reached,
    or TLS with it failed): the caller fixes another thing in each case."""
    words = problem.lower()  # submission.check and Mailboxes.check say "refused the ..."
    if "refused the" in words and ("password" in words or "credentials" in words):
        return 401
    return 502
