"""API keys: made here, stored only as a SHA-256 hash, checked by both ingresses.

A secret reads `mg_<key id>_<43 random url-safe characters>`. The id part lets the
store find the row without scanning; the random part (256 bits) is what is hashed.
A fast hash is right for such a secret: it cannot be guessed, only stolen, and
nothing reversible is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable

from mailgate.models import ApiKey, Scope, new_id
from mailgate.store import Store

PREFIX = "mg_"
# A hash to compare against when the id is unknown, so both failures cost the same.
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_of(secret: str) -> str | None:
    if not secret.startswith(PREFIX):
        return None
    key_id, sep, token = secret[len(PREFIX) :].partition("_")
    if not sep or len(key_id) != 26 or not token:
        return None
    return key_id


def sandbox_problem(scopes: Iterable[Scope], sandbox: bool) -> str | None:
    """A sandbox key may not be an admin key: admin manages real keys, domains and every
    key's mail, which a key handed to CI or a contractor must not reach."""
    if sandbox and Scope.ADMIN in set(scopes):
        return "A sandbox key cannot have the admin scope"
    return None


def new_key(
    name: str, scopes: Iterable[Scope], sender_domains: Iterable[str] = (), sandbox: bool = False
) -> tuple[ApiKey, str]:
    """A fresh key and its secret (shown once, never stored). A sandbox key's mail goes
    through every rule and record but is answered by the simulator, never sent."""
    key = ApiKey(
        id=new_id(),
        name=name,
        scopes=frozenset(scopes),
        sender_domains=tuple(sorted({d.strip().lower() for d in sender_domains if d.strip()})),
        created_at=time.time(),
        revoked_at=None,
        sandbox=sandbox,
    )
    return key, f"{PREFIX}{key.id}_{secrets.token_urlsafe(32)}"


async def create_key(
    store: Store,
    name: str,
    scopes: Iterable[Scope],
    sender_domains: Iterable[str] = (),
    sandbox: bool = False,
) -> tuple[ApiKey, str]:
    scopes = list(scopes)
    problem = sandbox_problem(scopes, sandbox)
    if problem is not None:
        raise ValueError(problem)
    key, secret = new_key(name, scopes, sender_domains, sandbox)
    await store.add_key(key, hash_secret(secret))
    return key, secret


async def authenticate(store: Store, secret: str) -> ApiKey | None:
    """The active key this secret belongs to, or None (unknown, wrong or revoked alike)."""
    key_id = key_id_of(secret)
    found = await store.get_key(key_id) if key_id else None
    stored_hash = found[1] if found else _DUMMY_HASH
    ok = hmac.compare_digest(stored_hash, hash_secret(secret))
    if not ok or found is None or not found[0].active:
        return None
    return found[0]
