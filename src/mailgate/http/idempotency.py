"""`Idempotency-Key`: a repeat of a request is answered with the first one's response.

The key is kept per API key with a SHA-256 of the path and body (and, for a
message/rfc822 body, the query string holding its envelope; and any header a route says
changes the request's meaning, e.g. Resend's x-batch-validation); the door stores it in
the same transaction as the message. The same key with another request is 409.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response

from mailgate.http.errors import ApiError, invalid, unavailable
from mailgate.ingress.accept import IdempotencyRequest
from mailgate.models import ApiKey
from mailgate.store import Store

IDEMPOTENCY_TTL = 24 * 3600.0


class Idempotency:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def begin(
        self,
        request: Request,
        key: ApiKey,
        body: bytes,
        media_type: str,
        status: int = 202,
        variant: str = "",
    ) -> tuple[IdempotencyRequest | None, Response | None]:
        """(what the door should record, or None; the stored answer to a repeat, or None,
        with `status`: the route's success status). `variant`: what else, outside the
        body, makes this request another one (a header that changes its meaning)."""
        idem_key = request.headers.get("idempotency-key")
        if idem_key is None:
            return None, None
        if not 1 <= len(idem_key) <= 255 or any(c in idem_key for c in "\r\n\x00"):
            raise invalid("Idempotency-Key must be 1-255 characters", "Idempotency-Key")
        shape = request.url.path
        if media_type == "message/rfc822":  # its envelope is in the query string
            shape += "?" + request.url.query
        if variant:
            shape += "\0" + variant
        digest = hashlib.sha256(shape.encode() + b"\0" + body).hexdigest()
        idem = IdempotencyRequest(f"{key.id}:{idem_key}", digest, IDEMPOTENCY_TTL)
        found = await self.store.idempotent_response(key.id, idem.key)
        if found is None:
            return idem, None
        return idem, replayed(found, idem, status)

    async def replay(self, idem: IdempotencyRequest, status: int = 202) -> Response:
        """Answer a request that lost the race for its idempotency key: the winner's row
        is committed (the conflict was found inside a later transaction), so read it."""
        found = await self.store.idempotent_response(idem.key.split(":", 1)[0], idem.key)
        if found is None:  # it expired in between: let the client retry
            raise unavailable()
        return replayed(found, idem, status)


def replayed(found: tuple[str, str], idem: IdempotencyRequest, status: int = 202) -> Response:
    """The stored (request hash, response) as the answer to this request, or 409."""
    if found[0] != idem.request_hash:
        raise ApiError(
            409,
            "idempotency_conflict",
            "This Idempotency-Key was used with a different request",
            "Idempotency-Key",
        )
    return Response(
        found[1],
        status_code=status,
        media_type="application/json",
        headers={"Idempotent-Replayed": "true"},
    )
