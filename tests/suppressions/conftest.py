"""The suppression and sandbox tests run the real server of the domain tests (delivery
to a scripted sink, DNS on loopback), with webhooks to a real receiver."""

from collections.abc import Iterator
from typing import Any

import pytest

from mailgate import keys
from mailgate.models import Scope
from tests.domains.conftest import Mail, ca, dns_zone, mail
from tests.events.receiver import Receiver, receiver

__all__ = ["ca", "dns_zone", "mail"]
HOOKS = {"allow_http": True, "allow_private_networks": ["127.0.0.0/8"], "timeout": 1.0}


@pytest.fixture
def got() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


def make_key(mail: Mail, name: str, *, sandbox: bool = False, domains: tuple[str, ...] = ()) -> str:
    scopes = [Scope.SEND, Scope.READ]
    return mail.server.call(lambda s: keys.create_key(s, name, scopes, domains, sandbox))[1]


def call(mail: Mail, key: str, method: str, path: str, **kw: Any) -> Any:
    return mail.http.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kw)


def send(mail: Mail, key: str, to: list[str], sender: str = "app@example.org") -> dict[str, Any]:
    """POST /v1/messages of a short text message; its 202's JSON."""
    sent = call(
        mail,
        key,
        "POST",
        "/v1/messages",
        json={"from": sender, "to": to, "subject": "s", "text": "t"},
    )
    assert sent.status_code == 202, sent.text
    return dict(sent.json())


def hook(mail: Mail, key: str, got: Receiver, events: list[str]) -> str:
    """An endpoint of `key` for `events` at the receiver; its signing secret."""
    mail.zone.add("hooks.example.test", "A", "127.0.0.1")
    made = call(
        mail,
        key,
        "POST",
        "/v1/webhooks",
        json={"url": got.url("/in", host="hooks.example.test"), "events": events},
    )
    assert made.status_code == 201, made.text
    return str(made.json()["secret"])
