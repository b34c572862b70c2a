"""POST /v1/messages/raw through the real server: what a complete message may carry, and
what mailgate changes in it before storing (issue 11: #5, #9 and the raw low items)."""

from __future__ import annotations

import base64
import email
import email.policy
from typing import Any

import httpx
import pytest

from tests.ingress.conftest import RunningServer

HEAD = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: raw\r\n"


def post_json(
    server: RunningServer, body: dict[str, Any], key: str | None = None, **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{server.http_url}/v1/messages/raw",
        json=body,
        timeout=30,
        headers={"Authorization": f"Bearer {key or server.send_key}", **headers},
    )


def post_rfc822(
    server: RunningServer,
    raw: bytes,
    params: dict[str, Any],
    key: str | None = None,
    **headers: str,
) -> httpx.Response:
    return httpx.post(
        f"{server.http_url}/v1/messages/raw",
        content=raw,
        params=params,
        timeout=30,
        headers={
            "Authorization": f"Bearer {key or server.send_key}",
            "Content-Type": "message/rfc822",
            **headers,
        },
    )


def raw_body(raw: bytes, to: Any = "b@example.com", **extra: Any) -> dict[str, Any]:
    return {"raw": base64.b64encode(raw).decode(), "from": "a@example.org", "to": to, **extra}


def stored(server: RunningServer, message_id: str) -> bytes:
    raw = server.call(lambda s: s.get_raw(message_id))
    assert raw is not None
    return raw


def total(server: RunningServer) -> int:
    return sum(server.call(lambda s: s.status_counts()).values())


def head_of(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"


# -- #5: Bcc ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["json", "rfc822"])
def test_bcc_is_stripped_and_only_to_is_the_envelope(server: RunningServer, how: str) -> None:
    """Issue 11 #5: a Bcc header (folded, repeated, any case) reached every recipient."""
    raw = (
        b"From: a@example.org\r\n"
        b"BCC: hidden@example.net,\r\n"
        b"\tsecret@example.net\r\n"
        b"To: b@example.com\r\n"
        b"bcc: other@example.net\r\n"
        b"Resent-Bcc: resent@example.net\r\n"
        b"Bcc : spaced@example.net\r\n"  # obsolete syntax some readers still honour
        b"Subject: hi\r\n"
        b"\r\n"
        b"Bcc: this line is body text and stays\r\n"
    )
    to = ["b@example.com", "hidden@example.net"]
    if how == "json":
        r = post_json(server, raw_body(raw, to))
    else:
        r = post_rfc822(server, raw, {"from": "a@example.org", "to": to})
    assert r.status_code == 202, r.text
    assert [x["address"] for x in r.json()["recipients"]] == to  # the request's, not Bcc's
    got = stored(server, r.json()["id"])
    head = head_of(got).lower()
    assert b"bcc" not in head and b"secret@" not in head and b"other@" not in head
    assert b"spaced@" not in head
    assert b"\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nBcc: this line is body" in got
    msg = email.message_from_bytes(got, policy=email.policy.default)
    assert msg["Bcc"] is None and msg["Resent-Bcc"] is None and msg["From"] == "a@example.org"


# -- #9: the envelope is addr-specs ------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "field"),
    [
        (["b@example.com", "c@example.com NOTIFY=NEVER"], "to[1]"),
        (["<c@example.com> NOTIFY=SUCCESS ORCPT=rfc822;x@example.com"], "to[0]"),
        (["b@example.com", "c@example.com>\r\nRCPT TO:<d@example.com"], "to[1]"),
        (["c@example.com ORCPT=rfc822;x"], "to[0]"),
        (["Name <c@example.com> x"], "to[0]"),
        (["c d@example.com"], "to[0]"),
        (["c@" + "a" * 64 + ".com"], "to[0]"),
    ],
)
@pytest.mark.parametrize("how", ["json", "rfc822"])
def test_recipients_that_are_not_addresses_are_refused(
    server: RunningServer, how: str, to: list[str], field: str
) -> None:
    """Issue 11 #9: `to` went verbatim into RCPT TO:<...>, parameters and all."""
    if how == "json":
        r = post_json(server, raw_body(HEAD + b"\r\nx\r\n", to))
    else:
        r = post_rfc822(server, HEAD + b"\r\nx\r\n", {"from": "a@example.org", "to": to})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert total(server) == 0


@pytest.mark.parametrize("how", ["json", "rfc822"])
def test_name_and_address_becomes_the_addr_spec(server: RunningServer, how: str) -> None:
    """Issue 11 #9: `Name <addr>` (and parameters hidden in the name) went on the wire
    inside RCPT TO:<...>; the envelope is now the parsed addr-spec, as for /v1/messages."""
    to = [
        "Bee <b@example.com>",
        '"C, Dee" <c@example.com>',
        "x <a@example.com> NOTIFY=NEVER ORCPT=rfc822;a@example.com <d@example.com>",
    ]
    if how == "json":
        r = post_json(server, raw_body(HEAD + b"\r\nx\r\n", to))
    else:
        r = post_rfc822(server, HEAD + b"\r\nx\r\n", {"from": "a@example.org", "to": to})
    assert r.status_code == 202, r.text
    want = ["b@example.com", "c@example.com", "d@example.com"]
    assert [x["address"] for x in r.json()["recipients"]] == want
    rcpts = server.call(lambda s: s.recipients(r.json()["id"]))
    assert [x.address for x in rcpts] == want


# -- From, Message-ID, the 202 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"To: b@example.com\r\nSubject: no from\r\n\r\nx\r\n", "no From"),
        (b"From: \r\nTo: b@example.com\r\n\r\nx\r\n", "empty From"),
        (b"From: a@example.org\r\nFrom: z@example.org\r\n\r\nx\r\n", "two Froms"),
        (
            b"Subject: body starts early\r\nthis is body\r\nFrom: a@example.org\r\n\r\n",
            "From in body",
        ),
    ],
)
def test_a_message_without_one_from_is_refused(server: RunningServer, raw: bytes, why: str) -> None:
    r = post_json(server, raw_body(raw))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "raw.From"
    assert total(server) == 0


@pytest.mark.parametrize(
    "mid_lines", [b"", b"Message-ID:\r\n", b"Message-ID:   \r\n", b"Message-Id:\r\n \r\n"]
)
def test_the_stored_message_has_one_real_message_id_and_the_202_says_it(
    server: RunningServer, mid_lines: bytes
) -> None:
    """An empty Message-ID was kept, and the 202 said message_id: null though mailgate
    had added one."""
    raw = b"From: a@example.org\r\n" + mid_lines + b"To: b@example.com\r\n\r\nx\r\n"
    r = post_json(server, raw_body(raw))
    assert r.status_code == 202, r.text
    out = r.json()
    got = stored(server, out["id"])
    msg = email.message_from_bytes(got, policy=email.policy.default)
    ids = msg.get_all("Message-ID")
    assert ids is not None and len(ids) == 1 and ids[0].strip()
    assert out["message_id"] == ids[0] == f"<{out['id']}@mx.mailgate.test>"
    assert server.call(lambda s: s.get_message(out["id"])).message_id_header == ids[0]  # type: ignore[union-attr]
    assert msg["Date"] is not None and len(msg.get_all("Date")) == 1


def test_a_given_message_id_is_kept_and_answered(server: RunningServer) -> None:
    raw = b"From: a@example.org\r\nMessage-ID: <given@example.org>\r\n\r\nx\r\n"
    r = post_json(server, raw_body(raw))
    assert r.status_code == 202 and r.json()["message_id"] == "<given@example.org>"
    got = stored(server, r.json()["id"])
    assert got.count(b"Message-ID") == 1
    two = b"From: a@example.org\r\nMessage-ID: <a@x>\r\nMessage-ID: <b@x>\r\n\r\nx\r\n"
    r = post_json(server, raw_body(two))
    assert r.status_code == 422 and r.json()["error"]["field"] == "raw.Message-ID"


# -- Idempotency-Key over message/rfc822 -------------------------------------------------------


def test_rfc822_retry_with_another_recipient_is_not_replayed(server: RunningServer) -> None:
    """The fingerprint ignored the query string: a retry with another to= was answered
    with the first 202 and the new recipient never stored."""
    raw = HEAD + b"\r\nx\r\n"
    params = {"from": "a@example.org", "to": "b@example.com"}
    first = post_rfc822(server, raw, params, **{"Idempotency-Key": "q1"})
    same = post_rfc822(server, raw, params, **{"Idempotency-Key": "q1"})
    assert first.status_code == same.status_code == 202
    assert same.headers["Idempotent-Replayed"] == "true" and same.json() == first.json()
    other = post_rfc822(
        server,
        raw,
        {**params, "to": ["b@example.com", "c@example.com"]},
        **{"Idempotency-Key": "q1"},
    )
    assert other.status_code == 409, other.text
    assert other.json()["error"]["field"] == "Idempotency-Key"
    sender = post_rfc822(
        server, raw, {**params, "from": "z@example.org"}, **{"Idempotency-Key": "q1"}
    )
    assert sender.status_code == 409
    assert total(server) == 1


# -- who the message says sends it, for a domain-limited key ----------------------------------


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (b"From: a@evil.test", "raw.From"),
        (b"From: a@example.org, b@evil.test", "raw.From"),
        (b"Sender: s@evil.test", "raw.Sender"),
        (b"Sender: Someone\r\n <s@evil.test>", "raw.Sender"),
        (b"Resent-From: r@evil.test", "raw.Resent-From"),
        (b"resent-sender: r@evil.test", "raw.Resent-Sender"),
        (b"Sender: not an address", "raw.Sender"),
    ],
)
def test_a_domain_limited_key_cannot_name_another_domain(
    server: RunningServer, line: bytes, field: str
) -> None:
    raw = (b"From: a@example.org\r\n" if not line.startswith(b"From") else b"") + line
    raw += b"\r\nTo: b@example.com\r\n\r\nx\r\n"
    r = post_json(server, raw_body(raw), key=server.restricted_key)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == {
        "code": "sender_not_allowed",
        "message": r.json()["error"]["message"],
        "field": field,
    }
    assert total(server) == 0
    ok = b"From: a@example.org\r\nSender: s@example.org\r\nResent-From: r@example.org\r\n\r\nx\r\n"
    assert post_json(server, raw_body(ok), key=server.restricted_key).status_code == 202
    # an unlimited key may relay for anyone
    assert post_json(server, raw_body(raw)).status_code == 202


def test_utf8_addresses_in_the_raw_envelope(server: RunningServer) -> None:
    raw = "From: josé@example.org\r\nTo: zoë@example.com\r\n\r\nx\r\n".encode()
    r = post_json(server, {**raw_body(raw, ["zoë@bücher.example"]), "from": "josé@example.org"})
    assert r.status_code == 202, r.text
    assert r.json()["recipients"][0]["address"] == "zoë@bücher.example"
    assert stored(server, r.json()["id"]).endswith(raw)
