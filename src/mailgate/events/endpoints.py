"""Webhook endpoints as a resource: made with a signing secret (shown once), listed and
read by their owner (an admin key: all), changed, their secret rotated (the old one
keeps signing beside the new for `webhooks.secret_overlap`), deleted. A URL is checked
when it is set (urls.py) and again before every send."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import dns.asyncresolver

from mailgate.config import WebhooksConfig
from mailgate.errors import RequestError
from mailgate.events import signing, urls
from mailgate.events.payloads import KIND_OF_TYPE, Context, payload, timestamp
from mailgate.models import ApiKey, Scope, Webhook, new_id
from mailgate.reachable import Network
from mailgate.secretbox import SecretBox
from mailgate.store import Store

MAX_DESCRIPTION = 200
TEST_TYPE = "webhook.test"  # sent by POST /v1/webhooks/{id}/test only


def matches(hook: Webhook, event_type: str, owner: str | None, at: float) -> bool:
    """An endpoint gets the types it asked for, of its owner's messages (an admin's: all),
    from its creation on."""
    return (
        hook.enabled
        and event_type in hook.events
        and (hook.api_key_id is None or hook.api_key_id == owner)
        and at >= hook.created_at
    )


def owner_of(key: ApiKey) -> str | None:
    """An admin key's endpoints get every event; any other key's, its own messages'."""
    return None if key.has(Scope.ADMIN) else key.id


def event_types(types: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(types) - set(KIND_OF_TYPE))
    if unknown:
        raise RequestError("invalid_field", f"Unknown event type {unknown[0]!r}", "events")
    if not types:
        raise RequestError("invalid_field", "Give at least one event type", "events")
    return tuple(dict.fromkeys(types))


class WebhookAdmin:
    def __init__(
        self,
        store: Store,
        box: SecretBox,
        cfg: WebhooksConfig,
        resolver: dns.asyncresolver.Resolver,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.box, self.cfg, self.resolver, self.clock = store, box, cfg, resolver, clock
        self.allowed: list[Network] = [
            ipaddress.ip_network(n, strict=False) for n in cfg.allow_private_networks
        ]

    async def check_url(self, url: str) -> str:
        dest = urls.parse_url(url, self.cfg.allow_http)
        if isinstance(dest, str):
            raise RequestError("invalid_field", f"url {dest}", "url")
        found = await urls.addresses(dest.host, self.resolver, self.allowed)
        if isinstance(found, str):
            raise RequestError("invalid_field", f"url: {found}", "url")
        return url

    async def create(
        self, key: ApiKey, url: str, types: Sequence[str], description: str
    ) -> tuple[Webhook, str]:
        now = self.clock()
        owner = owner_of(key)
        mine = [h for h in await self.store.list_webhooks(owner) if h.api_key_id == owner]
        if len(mine) >= self.cfg.max_endpoints:
            reason = f"At most {self.cfg.max_endpoints} endpoints per key; remove one first"
            raise RequestError("conflict", reason, "url")
        hook = Webhook(
            f"wh_{new_id(now)}",
            owner,
            await self.check_url(url),
            event_types(types),
            description,
            True,
            None,
            now,
            now,
            key.id,
        )
        secret = signing.new_secret()
        await self.store.add_webhook(hook, self._seal([(secret, None)]))
        return hook, secret

    async def get(self, key: ApiKey, hook_id: str) -> Webhook:
        found = await self.store.get_webhook(hook_id)
        owner = owner_of(key)
        if found is None or (owner is not None and found[0].api_key_id != owner):
            raise RequestError("not_found", f"No webhook {hook_id}", "id")  # not revealed
        return found[0]

    async def list_for(self, key: ApiKey) -> list[Webhook]:
        return await self.store.list_webhooks(owner_of(key))

    async def update(
        self,
        key: ApiKey,
        hook_id: str,
        url: str | None,
        types: Sequence[str] | None,
        description: str | None,
        enabled: bool | None,
    ) -> Webhook:
        hook = await self.get(key, hook_id)
        changed = dataclasses.replace(
            hook,
            url=await self.check_url(url) if url is not None else hook.url,
            events=event_types(types) if types is not None else hook.events,
            description=description if description is not None else hook.description,
            enabled=hook.enabled if enabled is None else enabled,
            disabled_reason=hook.disabled_reason if enabled is None or not enabled else None,
            updated_at=self.clock(),
        )
        if enabled is False:
            changed = dataclasses.replace(changed, disabled_reason="disabled by its owner")
        await self.store.update_webhook(changed)
        return changed

    async def rotate_secret(self, key: ApiKey, hook_id: str) -> tuple[Webhook, str]:
        """A new secret; the current one signs beside it for secret_overlap seconds."""
        hook = await self.get(key, hook_id)
        found = await self.store.get_webhook(hook.id)
        assert found is not None
        now = self.clock()
        current = [s for s, until in self.secrets(found[1], now)][:1]
        secret = signing.new_secret()
        kept = [(secret, None), *((s, now + self.cfg.secret_overlap) for s in current)]
        await self.store.set_webhook_secrets(hook.id, self._seal(kept), now)
        return hook, secret

    async def delete(self, key: ApiKey, hook_id: str) -> None:
        hook = await self.get(key, hook_id)
        await self.store.delete_webhook(hook.id)

    def secrets(self, sealed: str, now: float) -> list[tuple[str, float | None]]:
        """The secrets that sign now, newest first."""
        kept = json.loads(self.box.unseal(sealed))
        return [(k["secret"], k["until"]) for k in kept if k["until"] is None or k["until"] > now]

    def _seal(self, secrets: Sequence[tuple[str, float | None]]) -> str:
        kept = [{"secret": s, "until": until} for s, until in secrets]
        return self.box.seal(json.dumps(kept).encode())

    async def attempts(self, key: ApiKey, hook_id: str, limit: int) -> list[dict[str, Any]]:
        hook = await self.get(key, hook_id)
        rows = await self.store.webhook_attempts(hook.id, limit)
        return [
            {
                "event_id": r[1],
                "at": timestamp(r[2]),
                "status_code": r[3],
                "latency_ms": round(r[4] * 1000, 1),
                "error": r[5],
                "next_attempt_at": timestamp(r[6]) if r[6] is not None else None,
            }
            for r in rows
        ]

    async def send_test(self, key: ApiKey, hook_id: str) -> str:
        """A `webhook.test` event to this endpoint alone, due now; its id."""
        hook = await self.get(key, hook_id)
        now = self.clock()
        event_id = f"evt_test_{new_id(now)}"
        body = {
            "id": event_id,
            "type": TEST_TYPE,
            "timestamp": timestamp(now),
            "data": {"webhook_id": hook.id},
        }
        text = json.dumps(body, separators=(",", ":"))
        await self.store.queue_webhook_messages(
            [(new_id(now), hook.id, event_id, text, now, now, now)]
        )
        return event_id

    async def replay(self, key: ApiKey, event_ref: str) -> tuple[str, int]:
        """Send an event again, with its id, to every enabled endpoint that takes it."""
        number = event_ref.removeprefix("evt_")
        valid = number.isascii() and number.isdigit() and len(number) <= 18
        event = await self.store.event_by_id(int(number)) if valid else None
        owner = owner_of(key)
        if event is None or (owner is not None and event.api_key_id != owner):
            raise RequestError("not_found", f"No event {event_ref}", "id")
        ids = [event.message_id] if event.message_id else []
        rcpts = [event.recipient_id] if event.recipient_id is not None else []
        body = payload(event, Context(*await self.store.event_context(ids, rcpts)))
        if body is None:
            raise RequestError("not_found", f"{event_ref} is not a published event", "id")
        now = self.clock()
        text = json.dumps(body, separators=(",", ":"))
        hooks = [
            h
            for h in await self.store.list_webhooks(None)
            if matches(h, body["type"], event.api_key_id, h.created_at)  # replay: any age
            and (owner is None or h.api_key_id == owner)
        ]
        rows = [(new_id(now), h.id, body["id"], text, now, now, now) for h in hooks]
        await self.store.queue_webhook_messages(rows)
        return body["id"], len(rows)
