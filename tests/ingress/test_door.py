"""The door (ingress/accept.py) tested directly against a real SQLite store: each rule's
refusal, the order the rules run in, the hooks, counting, and that SMTP and HTTP say
the same reason for the same refusal."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mailgate import keys
from mailgate.compose import Draft
from mailgate.http.errors import refusal_error
from mailgate.ingress.accept import (
    Accepted,
    Client,
    Door,
    IdempotencyRequest,
    Refusal,
    Rule,
    Submission,
)
from mailgate.ingress.smtp_relay import smtp_reply
from mailgate.models import ApiKey, NewMessage, Scope, Source, Suppression, SuppressionReason
from mailgate.store import Store, open_store
from tests.ingress.conftest import RunningServer
from tests.ingress.smtp_relay.dialog import greeted

SMTP_CLIENT = Client("192.0.2.7", "ESMTPA", "client.example.org")
HTTP_CLIENT = Client("198.51.100.9", "HTTP")
MESSAGE = b"From: bob@example.org\r\nSubject: hello\r\n\r\nhi\r\n"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'mailgate.db'}")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def limited(store: Store) -> ApiKey:
    key, _ = await keys.create_key(store, "limited", [Scope.SEND], ["example.org"])
    return key


class Recorder:
    """Hooks and a counter that write down what the door asked them, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.counted: list[tuple[Source, int]] = []

    def signer(self, name: str):  # type: ignore[no-untyped-def]
        def sign(raw: bytes, sub: Submission) -> bytes:
            self.calls.append(name)
            assert b"Received: from " in raw  # headers are added before signing
            return f"X-Signed-By: {name}\r\n".encode() + raw

        return sign

    def count(self, source: Source, n: int) -> None:
        self.counted.append((source, n))


def door(store: Store, rec: Recorder, **kw: object) -> Door:
    return Door(
        store,
        "mx.mailgate.test",
        kw.pop("max_recipients", 3),  # type: ignore[arg-type]
        count=rec.count,
        signers=[rec.signer("k1"), rec.signer("k2")],
    )


def smtp(key: ApiKey | None, content: bytes = MESSAGE, **kw: object) -> Submission:
    args: dict[str, object] = {
        "sender": "bob@example.org",
        "recipients": ("alice@example.com",),
        "content": content,
        "source": Source.SMTP,
        "client": SMTP_CLIENT,
        "key": key,
        **kw,
    }
    return Submission(**args)  # type: ignore[arg-type]


async def total(store: Store) -> int:
    return sum((await store.status_counts()).values())


async def test_accepted_message_has_its_headers_hooks_in_order_and_is_counted_once(
    store: Store, limited: ApiKey
) -> None:
    rec = Recorder()
    answer = await door(store, rec).accept(smtp(limited))
    assert isinstance(answer, Accepted) and not answer.replayed
    assert rec.calls == ["k1", "k2"]
    assert rec.counted == [(Source.SMTP, 1)]
    raw = await store.get_raw(answer.message_id)
    assert raw is not None
    assert raw.startswith(b"X-Signed-By: k2\r\nX-Signed-By: k1\r\nReceived: from ")  # last
    assert b"Received: from client.example.org ([192.0.2.7])\r\n\tby mx.mailgate.test" in raw
    assert b"with ESMTPA id " + answer.message_id.encode() in raw
    assert f"\r\nMessage-ID: <{answer.message_id}@mx.mailgate.test>\r\n".encode() in raw
    assert b"\r\nDate: " in raw and raw.endswith(MESSAGE)
    stored = await store.get_message(answer.message_id)
    assert stored is not None and stored.api_key_id == limited.id


async def test_an_unauthorised_sender_is_refused_before_anything_else(
    store: Store, limited: ApiKey
) -> None:
    rec = Recorder()
    everything_wrong = smtp(
        limited,
        sender="ceo@evil.test",
        recipients=tuple(f"r{i}@example.com" for i in range(10)),  # over the cap too
    )
    answer = await door(store, rec).accept(everything_wrong)
    assert answer == Refusal(Rule.SENDER, "sender", "Sender address not allowed for this key")
    assert rec.calls == [] and rec.counted == [] and await total(store) == 0


@pytest.mark.parametrize("field", ["From", "Sender", "Resent-From", "Resent-Sender"])
async def test_every_originator_field_is_authorised(
    store: Store, limited: ApiKey, field: str
) -> None:
    rec = Recorder()
    head = {"From": "bob@example.org", field: "Boss <ceo@evil.test>"}
    content = "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode() + b"\r\nhi\r\n"
    answer = await door(store, rec).accept(smtp(limited, content))
    assert answer == Refusal(Rule.SENDER, field, f"{field}: address not allowed for this key")
    assert rec.calls == [] and await total(store) == 0


async def test_a_limited_key_needs_a_from_and_an_unlimited_one_does_not(
    store: Store, limited: ApiKey
) -> None:
    rec = Recorder()
    no_from = b"Subject: s\r\n\r\nhi\r\n"
    refused = await door(store, rec).accept(smtp(limited, no_from))
    assert isinstance(refused, Refusal) and refused.field == "From"
    anyone, _ = await keys.create_key(store, "anyone", [Scope.SEND])
    assert isinstance(await door(store, rec).accept(smtp(anyone, no_from)), Accepted)
    assert isinstance(await door(store, rec).accept(smtp(None, no_from)), Accepted)  # trusted


async def test_recipient_cap_is_checked_after_the_sender_and_before_the_hooks(
    store: Store, limited: ApiKey
) -> None:
    rec = Recorder()
    four = tuple(f"r{i}@example.com" for i in range(4))
    answer = await door(store, rec, max_recipients=3).accept(smtp(limited, recipients=four))
    assert answer == Refusal(Rule.RECIPIENTS, "recipients", "At most 3 recipients per message")
    assert rec.calls == [] and await total(store) == 0
    three = four[:3]
    assert isinstance(await door(store, rec).accept(smtp(limited, recipients=three)), Accepted)


async def test_suppressed_recipients_are_stored_as_such_and_the_rest_queued(
    store: Store, limited: ApiKey
) -> None:
    now = 1_700_000_000.0
    await store.put_suppressions(
        [
            Suppression("gone@example.com", SuppressionReason.HARD_BOUNCE, now),
            Suppression("other@example.com", SuppressionReason.MANUAL, now, "elsewhere.test"),
        ]
    )
    rec = Recorder()
    rcpts = ("Gone@Example.com", "other@example.com", "alice@example.com")
    answer = await door(store, rec).accept(smtp(limited, recipients=rcpts))
    assert isinstance(answer, Accepted) and answer.suppressed == 1
    assert smtp_reply(answer).text.endswith("(1 recipient suppressed, not sent)")
    by_address = {r.address: r for r in await store.recipients(answer.message_id)}
    assert by_address["Gone@Example.com"].status == "suppressed"
    assert by_address["Gone@Example.com"].next_attempt_at is None
    # scoped to another sending domain: this message (From example.org) is not stopped
    assert by_address["other@example.com"].status == "queued"
    assert by_address["alice@example.com"].status == "queued"
    events = await store.events(answer.message_id)
    assert [e.kind for e in events] == ["accepted", "suppressed"]
    assert events[1].details == {"reason": "hard_bounce"}
    assert events[1].recipient_id == by_address["Gone@Example.com"].id


async def test_prepare_commits_nothing(store: Store, limited: ApiKey) -> None:
    rec = Recorder()
    prepared = door(store, rec).prepare(smtp(limited))
    assert isinstance(prepared, NewMessage) and prepared.source is Source.SMTP
    assert await total(store) == 0 and rec.counted == []


async def test_counted_once_per_accepted_message_whatever_the_door(
    store: Store, limited: ApiKey
) -> None:
    rec = Recorder()
    d = door(store, rec)
    draft = Draft(sender=("Bob", "bob@example.org"), to=(("", "a@example.com"),), text="hi")
    http = Submission("bob@example.org", ("a@example.com",), draft, Source.HTTP, HTTP_CLIENT)
    raw_http = Submission("bob@example.org", ("a@example.com",), MESSAGE, Source.HTTP, HTTP_CLIENT)
    idem = IdempotencyRequest("smtp-transaction:x", "", 60)
    assert isinstance(await d.accept(smtp(limited, idempotency=idem)), Accepted)
    replay = await d.accept(smtp(limited, idempotency=idem))  # folded: not counted again
    assert isinstance(replay, Accepted) and replay.replayed
    assert isinstance(await d.accept(http), Accepted)
    batch = [d.prepare(raw_http) for _ in range(3)]
    assert all(isinstance(m, NewMessage) for m in batch)
    assert isinstance(await d.commit(batch), Accepted)  # type: ignore[arg-type]
    assert rec.counted == [(Source.SMTP, 1), (Source.HTTP, 1), (Source.HTTP, 3)]
    assert await total(store) == 5


async def test_http_received_names_the_api_and_the_client_address(store: Store) -> None:
    rec = Recorder()
    draft = Draft(sender=("", "bob@example.org"), to=(("", "a@example.com"),), text="hi")
    sub = Submission("bob@example.org", ("a@example.com",), draft, Source.HTTP, HTTP_CLIENT)
    answer = await door(store, rec).accept(sub)
    assert isinstance(answer, Accepted)
    raw = await store.get_raw(answer.message_id)
    assert raw is not None
    assert b"Received: from [198.51.100.9] (the HTTP API)\r\n\tby mx.mailgate.test" in raw
    assert b"helo" not in raw.lower() and b"api ([http])" not in raw
    assert f"Message-ID: <{answer.message_id}@mx.mailgate.test>".encode() in raw


def test_one_refusal_reads_the_same_in_both_protocols() -> None:
    refusal = Refusal(Rule.SENDER, "Sender", "Sender: address not allowed for this key")
    assert smtp_reply(refusal).text == refusal_error(refusal, raw=True).message
    assert refusal_error(refusal, raw=True).field == "raw.Sender"
    assert refusal_error(refusal, raw=False, prefix="messages[2]").field == "messages[2].raw.Sender"


def test_the_same_submission_refused_over_smtp_and_http_gives_the_same_reason(
    server: RunningServer,
) -> None:
    message = b"From: bob@example.org\r\nSender: Boss <ceo@evil.test>\r\nSubject: x\r\n\r\nhi\r\n"
    with greeted(server.smtp_port) as d:
        token = base64.b64encode(f"\0user\0{server.restricted_key}".encode()).decode()
        assert d.cmd(f"AUTH PLAIN {token}")[0] == 235
        assert d.cmd("MAIL FROM:<bob@example.org>")[0] == 250
        assert d.cmd("RCPT TO:<alice@example.com>")[0] == 250
        assert d.cmd("DATA")[0] == 354
        d.send(message + b".\r\n")
        code, text = d.read_reply()
    r = httpx.post(
        f"{server.http_url}/v1/messages/raw",
        json={
            "raw": base64.b64encode(message).decode(),
            "from": "bob@example.org",
            "to": ["alice@example.com"],
        },
        headers={"Authorization": f"Bearer {server.restricted_key}"},
    )
    error = r.json()["error"]
    assert (code, r.status_code) == (553, 403)
    assert text == f"553 5.7.1 {error['message']}"
    assert error == {
        "code": "sender_not_allowed",
        "message": "Sender: address not allowed for this key",
        "field": "raw.Sender",
    }
