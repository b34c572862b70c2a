"""Who is asking: the API key of a request, its scope and its rate.

The order of the answers: 503 while draining, 401 without a key, 429 for an address the
failed-login guard locked, 401 for an unknown, wrong, revoked or locked key (alike, after
the guard's growing delay), 403 without the scope, 429 over the key's rate.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import time
from pathlib import Path

from starlette.requests import Request

from mailgate import keys
from mailgate.auth_guard import AuthGuard
from mailgate.config import HttpConfig
from mailgate.http.errors import BEARER, ApiError, shutting_down
from mailgate.lifecycle import Lifecycle
from mailgate.models import ApiKey, Scope
from mailgate.shared import SharedBuckets
from mailgate.store import Store

AUTH_CACHE_SECONDS = 5.0  # a revoked key may keep working this long on a busy node
AUTH_CACHE_MAX = 10_000  # secrets remembered; the cache starts again past this


class RateLimit:
    """A token bucket per API key: `rate` requests a second, up to `burst` at once, shared
    by the server's processes when given a directory (shared.py)."""

    def __init__(self, rate: float, burst: int, directory: Path | None = None) -> None:
        self.rate, self.burst = rate, float(burst)
        path = directory / "http-rate.shm" if directory is not None else None
        self.buckets = SharedBuckets(rate, float(burst), path) if rate > 0 else None

    def wait(self, key_id: str, now: float) -> int:
        """0 and one token taken, or the whole seconds until a token is free."""
        if self.buckets is None:
            return 0
        seconds = self.buckets.take(key_id, now)
        return 0 if seconds <= 0 else max(1, int(seconds + 0.999))


class Auth:
    """The key behind each request, looked up at most every AUTH_CACHE_SECONDS."""

    def __init__(
        self,
        store: Store,
        cfg: HttpConfig,
        guard: AuthGuard,
        lifecycle: Lifecycle,
        shared: Path | None = None,
    ) -> None:
        self.store, self.guard, self.lifecycle = store, guard, lifecycle
        self.rate = RateLimit(cfg.rate_limit_per_second, cfg.rate_limit_burst, shared)
        self._cache: dict[str, tuple[ApiKey | None, float]] = {}  # secret -> (key, until)
        self._plain = [ipaddress.ip_network(n, strict=False) for n in cfg.plain_keys_from]
        self._plain_ok: dict[str, bool] = {}  # client address -> allowed (a bounded memo)

    def _plain_allowed(self, ip: str) -> bool:
        """May this client send a key over plain HTTP (http.plain_keys_from)?"""
        allowed = self._plain_ok.get(ip)
        if allowed is None:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:  # a Unix socket or a test client: not a network address
                return False
            if address.version == 6 and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            allowed = any(address in net for net in self._plain)
            if len(self._plain_ok) > 10_000:
                self._plain_ok.clear()
            self._plain_ok[ip] = allowed
        return allowed

    async def key_for(
        self, request: Request, scope: Scope | tuple[Scope, ...], secret: str | None = None
    ) -> ApiKey:
        """The request's key with `scope` (or one of several): from Authorization (Bearer,
        or Basic's password) unless a vendor surface found it elsewhere (`secret`, e.g. a
        Postmark token)."""
        if self.lifecycle.draining:
            raise shutting_down()
        if secret is None:
            secret = secret_from(request.headers.get("authorization", ""))
        if not secret:
            raise ApiError(
                401,
                "unauthorized",
                "Missing API key: use Authorization: Bearer <key>",
                None,
                BEARER,
            )
        ip = request.client.host if request.client else "unknown"
        if request.scope.get("scheme") == "http" and not self._plain_allowed(ip):
            raise ApiError(
                403,
                "https_required",
                "API keys are accepted over HTTPS only from your address (http.tls, or"
                " http.plain_keys_from for a proxy)",
            )
        if self.guard.ip_locked(ip):
            raise ApiError(
                429,
                "too_many_auth_failures",
                "Too many failed authentications from your address",
                headers={"Retry-After": str(self.guard.retry_after(ip))},
            )
        key = await self._lookup(secret)
        if key is not None and self.guard.key_locked(key.id, ip):
            key = None  # locked: answered exactly like a wrong key
        if key is None:
            # the same answer and a growing delay for unknown, wrong and locked keys
            await asyncio.sleep(self.guard.failed(ip, keys.key_id_of(secret)))
            raise ApiError(401, "unauthorized", "Invalid API key", None, BEARER)
        scopes = scope if isinstance(scope, tuple) else (scope,)
        if not any(key.has(s) for s in scopes):
            raise ApiError(403, "forbidden", f"This key lacks the {' or '.join(scopes)} scope")
        wait = self.rate.wait(key.id, time.time())
        if wait:
            raise ApiError(
                429,
                "rate_limited",
                "Too many requests for this key",
                headers={"Retry-After": str(wait)},
            )
        return key

    async def _lookup(self, secret: str) -> ApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(secret)
        if cached is not None and cached[1] > now:
            return cached[0]
        key = await keys.authenticate(self.store, secret)
        if len(self._cache) > AUTH_CACHE_MAX:
            self._cache.clear()
        self._cache[secret] = (key, now + AUTH_CACHE_SECONDS)
        return key

    def forget(self, key_id: str) -> None:
        """Drop a revoked key from this process's cache (other processes keep it at most
        AUTH_CACHE_SECONDS)."""
        for secret, (key, _) in list(self._cache.items()):
            if key is not None and key.id == key_id:
                del self._cache[secret]


def secret_from(header: str) -> str | None:
    """The key in `Authorization: Bearer <key>`, or the password of `Basic`."""
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and value.strip():
        return value.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        return decoded.partition(":")[2] or None
    return None
