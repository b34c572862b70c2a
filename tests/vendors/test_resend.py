"""The official `resend` SDK, unmodified, against a running mailgate: its base URL is
the only change. What it sent is read back at the receiving sink; what mailgate refuses
raises the SDK's own exception classes with mailgate's message."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
import resend
import resend.exceptions as rx

from mailgate import keys
from mailgate.http.errors import ApiError
from mailgate.http.vendors.resend_shapes import MISSING, error_body, last_event
from mailgate.models import RecipientStatus, Scope
from tests.vendors.conftest import INBOX, Mail

FROM = "Me <me@example.org>"


@pytest.fixture
def sdk(mail: Mail) -> Iterator[str]:
    """The SDK pointed at the server (module globals, put back after), with a key that
    sends and reads (Resend's full access); yields that key."""
    _, secret = mail.server.call(lambda s: keys.create_key(s, "resend", [Scope.SEND, Scope.READ]))
    saved = resend.api_key, resend.api_url
    resend.api_key, resend.api_url = secret, mail.server.http_url
    try:
        yield secret
    finally:
        resend.api_key, resend.api_url = saved


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def by_subject(mail: Mail, count: int) -> dict[str, Any]:
    received = mail.received(count, timeout=60)
    return {str(parsed(r.data)["subject"]): r for r in received}


def stored_subjects(mail: Mail) -> list[str]:
    """The subjects of every message the server stored, sorted."""
    listed = mail.admin("GET", "/v1/messages", params={"limit": 500})
    assert listed.status_code == 200, listed.text
    return sorted(m["subject"] for m in listed.json()["data"])


def wait_for(check: Callable[[], Any], timeout: float = 60) -> Any:
    """Poll until `check()` is truthy (delivery is asynchronous), then return it."""
    deadline = time.monotonic() + timeout
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert found
    return found


def test_send_with_every_field_arrives_as_sent(mail: Mail, sdk: str) -> None:
    resend.api_url = mail.server.http_url + "/"  # a trailing slash: //emails on the wire
    sent = resend.Emails.send(
        {
            "from": FROM,
            "to": f"you@{INBOX}",  # a string, not a list
            "cc": [f"copy@{INBOX}"],
            "bcc": f"hidden@{INBOX}",
            "reply_to": "replies@example.org",
            "subject": "Hello",
            "html": '<p>Hi <img src="cid:logo"></p>',
            "text": "Hi",
            "headers": {"X-Entity-Ref-ID": "123"},
            "attachments": [
                {"filename": "a.txt", "content": base64.b64encode(b"hello").decode()},
                {"filename": "b.bin", "content": list(b"\x00\xffhi")},
                {"filename": "logo.png", "content": [137, 80, 78, 71], "content_id": "logo"},
            ],
            "tags": [{"name": "category", "value": "welcome"}, {"name": "vip"}],
        }
    )
    assert set(sent) == {"id", "http_headers"}
    got = by_subject(mail, 1)["Hello"]
    assert sorted(got.recipients) == sorted([f"you@{INBOX}", f"copy@{INBOX}", f"hidden@{INBOX}"])
    message = parsed(got.data)
    assert message["From"] == FROM and message["To"] == f"you@{INBOX}"
    assert message["Cc"] == f"copy@{INBOX}" and message["Reply-To"] == "replies@example.org"
    assert message["Bcc"] is None and b"hidden@" not in got.data.split(b"\r\n\r\n")[0]
    assert message["X-Entity-Ref-ID"] == "123"
    parts = {p.get_filename(): p for p in message.iter_attachments()}
    assert parts["a.txt"].get_content() == "hello"
    assert parts["a.txt"].get_content_type() == "text/plain"  # from the name, as Resend does
    assert parts["b.bin"].get_payload(decode=True) == b"\x00\xffhi"
    body = message.get_body(("html",))
    assert body is not None and "cid:logo" in body.get_content()
    inline = [p for p in message.walk() if p["Content-ID"] == "<logo>"]
    assert inline and inline[0].get_payload(decode=True) == bytes([137, 80, 78, 71])

    email = wait_for(
        lambda: (e := resend.Emails.get(sent["id"]))["last_event"] == "delivered" and e
    )
    assert email["object"] == "email" and email["id"] == sent["id"]
    assert email["from"] == FROM and email["to"] == [f"you@{INBOX}"]
    assert email["cc"] == [f"copy@{INBOX}"] and email["bcc"] == [f"hidden@{INBOX}"]
    assert email["reply_to"] == ["replies@example.org"] and email["subject"] == "Hello"
    assert email["text"] == "Hi" and "cid:logo" in email["html"]
    assert email["tags"] == [{"name": "category", "value": "welcome"}, {"name": "vip"}]
    assert email["message_id"] == message["Message-ID"] and email["scheduled_at"] is None
    # mailgate's own view: tags to filter on, metadata for events and webhooks
    native = mail.admin("GET", f"/v1/messages/{sent['id']}").json()
    assert native["tags"] == ["category:welcome", "vip"]
    assert native["metadata"] == {"category": "welcome", "vip": ""}

    page = resend.Emails.list({"limit": 1})
    assert page["object"] == "list" and not page["has_more"]
    assert [e["id"] for e in page["data"]] == [sent["id"]]
    assert page["data"][0]["bcc"] == [f"hidden@{INBOX}"] and page["data"][0]["html"] is None


def test_batch_strict_then_permissive(mail: Mail, sdk: str) -> None:
    ok = {"from": FROM, "to": [f"a@{INBOX}"], "subject": "A", "text": "a"}
    sent = resend.Batch.send([ok, {**ok, "to": [f"b@{INBOX}"], "subject": "B", "html": "<b>b</b>"}])
    assert len(sent["data"]) == 2 and "errors" not in sent
    bad = {**ok, "to": ["not an address"], "subject": "C"}
    with pytest.raises(rx.ValidationError) as strict:
        resend.Batch.send([{**ok, "subject": "never"}, bad])  # strict: nothing is sent
    assert strict.value.code == 422 and "`[1].to[0]`" in strict.value.message
    loose = resend.Batch.send(
        [{**ok, "subject": "D"}, bad, {"to": [f"x@{INBOX}"], "text": "no from"}],
        {"batch_validation": "permissive"},
    )
    assert len(loose["data"]) == 1
    errors = loose["errors"]
    assert [e["index"] for e in errors] == [1, 2]
    assert "`[1].to[0]`" in errors[0]["message"] and "`[2].from`" in errors[1]["message"]
    received = by_subject(mail, 3)
    assert set(received) == {"A", "B", "D"}
    assert received["B"].recipients == [f"b@{INBOX}"]
    assert stored_subjects(mail) == ["A", "B", "D"]  # "never" was refused with its batch


def test_scheduled_send_cancelled_and_the_states_read_back(mail: Mail, sdk: str) -> None:
    later = resend.Emails.send(
        {
            "from": FROM,
            "to": [f"later@{INBOX}"],
            "subject": "Later",
            "text": "t",
            "scheduled_at": "2099-01-01T09:00:00.000Z",
        }
    )
    email = resend.Emails.get(later["id"])
    assert email["last_event"] == "scheduled"
    assert email["scheduled_at"].startswith("2099-01-01T09:00:00")
    with pytest.raises(rx.ResendError) as reschedule:
        resend.Emails.update({"id": later["id"], "scheduled_at": "2099-02-01T00:00:00Z"})
    assert reschedule.value.code == 405 and "cancel it" in reschedule.value.message
    cancelled = resend.Emails.cancel(later["id"])
    assert cancelled["object"] == "email" and cancelled["id"] == later["id"]
    assert resend.Emails.cancel(later["id"])["id"] == later["id"]  # again: still canceled
    assert resend.Emails.get(later["id"])["last_event"] == "canceled"

    now = resend.Emails.send({"from": FROM, "to": f"now@{INBOX}", "subject": "Now", "text": "t"})
    wait_for(lambda: resend.Emails.get(now["id"])["last_event"] == "delivered")
    with pytest.raises(rx.ValidationError, match="cannot be canceled"):
        resend.Emails.cancel(now["id"])

    added = mail.admin("POST", "/v1/suppressions", json={"address": f"gone@{INBOX}"})
    assert added.status_code in (200, 201), added.text
    gone = resend.Emails.send({"from": FROM, "to": f"gone@{INBOX}", "subject": "G", "text": "t"})
    assert resend.Emails.get(gone["id"])["last_event"] == "suppressed"
    bounced = resend.Emails.send(
        {"from": FROM, "to": f"reject@{INBOX}", "subject": "R", "text": "t"}
    )
    wait_for(lambda: resend.Emails.get(bounced["id"])["last_event"] == "bounced")
    assert [m.recipients for m in mail.received(1)] == [[f"now@{INBOX}"]]


def test_idempotency_key_answers_the_first_send_or_409(mail: Mail, sdk: str) -> None:
    params: Any = {"from": FROM, "to": [f"once@{INBOX}"], "subject": "Once", "text": "t"}
    first = resend.Emails.send(params, {"idempotency_key": "order-1"})
    again = resend.Emails.send(params, {"idempotency_key": "order-1"})
    assert again["id"] == first["id"]
    with pytest.raises(rx.ResendError) as conflict:
        resend.Emails.send({**params, "text": "other"}, {"idempotency_key": "order-1"})
    assert conflict.value.code == 409 and conflict.value.error_type == "invalid_idempotent_request"
    batch = [params, {**params, "subject": "Twice"}]
    ids = resend.Batch.send(batch, {"idempotency_key": "batch-1"})["data"]
    assert resend.Batch.send(batch, {"idempotency_key": "batch-1"})["data"] == ids
    with pytest.raises(rx.ResendError) as bad_key:
        resend.Emails.send(params, {"idempotency_key": "k" * 300})
    assert bad_key.value.code == 400 and bad_key.value.error_type == "invalid_idempotency_key"
    assert stored_subjects(mail) == ["Once", "Once", "Twice"]


def test_refusals_raise_the_sdk_classes_with_mailgate_reasons(mail: Mail, sdk: str) -> None:
    ok: Any = {"from": FROM, "to": [f"x@{INBOX}"], "subject": "s", "text": "t"}
    cases: list[tuple[dict[str, Any], type[rx.ResendError], str]] = [
        ({**ok, "to": ["bob@"]}, rx.ValidationError, "`to[0]`"),
        ({**ok, "from": None}, rx.MissingRequiredFieldsError, "Missing `from` field"),
        ({**ok, "to": None}, rx.MissingRequiredFieldsError, "Missing `to` field"),
        ({**ok, "text": None}, rx.MissingRequiredFieldsError, "`html` or `text`"),
        ({**ok, "template": {"id": "t-1"}}, rx.ValidationError, "`template`"),
        ({**ok, "open_tracking": True}, rx.ValidationError, "`open_tracking` field: Unknown"),
        (
            {**ok, "attachments": [{"path": "https://example.com/x.pdf", "filename": "x.pdf"}]},
            rx.ValidationError,
            "`attachments[0].path` field: mailgate does not fetch",
        ),
        (
            {**ok, "attachments": [{"filename": "x", "content": [1, 256]}]},
            rx.ValidationError,
            "`attachments[0].content`",
        ),
        ({**ok, "tags": [{"name": "has space"}]}, rx.ValidationError, "`tags[0].name`"),
        ({**ok, "scheduled_at": "in 1 min"}, rx.ValidationError, "natural language"),
        ({**ok, "headers": {"Bcc": "x@y.z"}}, rx.ValidationError, "`headers`"),
    ]
    for params, kind, words in cases:
        with pytest.raises(kind) as raised:
            resend.Emails.send(params)
        assert type(raised.value) is kind and words in raised.value.message, (params, raised)
        assert raised.value.code in (400, 422)

    resend.api_key = "wrong"
    with pytest.raises(rx.InvalidApiKeyError, match="Invalid API key"):
        resend.Emails.send(ok)
    resend.api_key = mail.server.restricted_key  # may send From example.org only
    with pytest.raises(rx.ResendError) as sender:
        resend.Emails.send({**ok, "from": "me@elsewhere.example"})
    assert sender.value.code == 403 and sender.value.error_type == "validation_error"
    assert "`from`" in sender.value.message
    sent = resend.Emails.send(ok)
    with pytest.raises(rx.ResendError) as restricted:  # a sending-only key reads nothing
        resend.Emails.get(sent["id"])
    assert restricted.value.code == 401 and restricted.value.error_type == "restricted_api_key"
    resend.api_key = sdk
    with pytest.raises(rx.ResendError) as unknown:
        resend.Emails.get(sent["id"])  # another key's email is not found
    assert unknown.value.code == 404 and unknown.value.error_type == "not_found"
    missing_key = httpx.post(f"{mail.server.http_url}/emails", json=ok)
    assert missing_key.status_code == 401
    assert missing_key.json()["name"] == "missing_api_key"


def test_hostile_requests_get_resend_shaped_4xx(mail: Mail, sdk: str) -> None:
    auth = {"Authorization": f"Bearer {sdk}"}
    ok: Any = {"from": FROM, "to": [f"x@{INBOX}"], "subject": "s", "text": "t"}
    deep = "[" * 100_000 + "]" * 100_000
    bodies: list[tuple[str, str, Any]] = [
        ("POST", "/emails", b"{not json"),
        ("POST", "/emails", deep.encode()),
        ("POST", "/emails", b"[]"),
        ("POST", "/emails", b"\xff\xfe"),
        ("POST", "/emails/batch", b"{}"),
        ("POST", "/emails/batch", b"[]"),
        ("POST", "/emails/batch", b'[1, null, "x"]'),
        ("POST", "/emails/batch", ("[" + ",".join(['{"to":"a@b.c"}'] * 501) + "]").encode()),
    ]
    wrong_types = [
        {"to": 5},
        {"to": [{"email": "a@b.c"}]},
        {"from": ["a@b.c"]},
        {"subject": {"x": 1}},
        {"html": 1},
        {"headers": ["X-A: b"]},
        {"headers": {"X-A": 1}},
        {"attachments": {"filename": "x"}},
        {"attachments": ["x"]},
        {"attachments": [{"filename": 5, "content": "aGk="}]},
        {"attachments": [{"filename": "x", "content": "not base64!"}]},
        {"attachments": [{"filename": "x", "content": [True, 1.5]}]},
        {"attachments": [{"filename": "x", "content": {}}]},
        {"attachments": [{"filename": "x", "content": "aGk=", "content_type": "no type"}]},
        {"tags": "x"},
        {"tags": [{"name": 1}]},
        {"tags": [{"name": "a"}, {"name": "a", "value": "b"}]},
        {"tags": [{"name": "n" * 300}]},
        {"tags": [{"name": f"t{i}"} for i in range(30)]},
        {"scheduled_at": 1e300},
        {"scheduled_at": "2030-01-01T00:00:00"},
        {"subject": "x" * 100_000},
        {"from": "x" * 5000 + "@example.org"},
        {"to": [f"r{i}@{INBOX}" for i in range(5000)]},
        {"headers": {"X-Evil": "a\r\nBcc: victim@example.com"}},
        {"reply_to": 7},
    ]
    bodies += [("POST", "/emails", {**ok, **change}) for change in wrong_types]
    bodies += [("POST", "/emails/batch", [ok, {**ok, **change}]) for change in wrong_types[:5]]
    bodies += [
        ("POST", "/emails", b"x" * (41 * 1024 * 1024)),  # past the 40 MiB body limit
        ("GET", "/emails/" + "A" * 5000, None),
        ("GET", "/emails?limit=0", None),
        ("GET", "/emails?limit=abc", None),
        ("GET", "/emails?before=x", None),
        ("GET", "/emails?after=%00", None),
        ("DELETE", "/emails/ABC", None),
        ("PUT", "/emails", None),
        ("GET", "/emails/ABC/cancel", None),
        ("POST", "/emails/ABC/nothing", None),
        ("POST", "/emails/00000000000000000000000000/cancel", None),
    ]
    with httpx.Client(base_url=mail.server.http_url, headers=auth, timeout=60) as http:
        for method, path, body in bodies:
            if isinstance(body, bytes):
                answer = http.request(
                    method, path, content=body, headers={"Content-Type": "application/json"}
                )
            else:
                answer = http.request(method, path, json=body)
            where = (method, path, str(body)[:120], answer.status_code, answer.text[:300])
            assert 400 <= answer.status_code < 500, where
            assert answer.headers["content-type"].startswith("application/json"), where
            error = answer.json()
            assert set(error) == {"statusCode", "name", "message"}, where
            assert error["statusCode"] == answer.status_code, where
        wrong_type = http.post("/emails", content=b"{}", headers={"Content-Type": "text/plain"})
        assert wrong_type.status_code == 415 and wrong_type.json()["name"] == "validation_error"
    assert stored_subjects(mail) == []  # none of it was taken


S = RecipientStatus


@pytest.mark.parametrize(
    ("statuses", "scheduled", "complained", "word"),
    [
        ([S.QUEUED], False, False, "queued"),
        ([S.QUEUED], True, False, "scheduled"),
        ([S.DELIVERED, S.DEFERRED], False, False, "delivery_delayed"),
        ([S.DELIVERED, S.QUEUED], False, False, "queued"),
        ([S.DELIVERED], False, False, "delivered"),
        ([S.DELIVERED], False, True, "complained"),
        ([S.DELIVERED, S.BOUNCED], False, False, "bounced"),
        ([S.DELIVERED, S.EXPIRED], False, False, "failed"),
        ([S.CANCELLED, S.DELIVERED], False, False, "delivered"),
        ([S.CANCELLED, S.SUPPRESSED], True, False, "canceled"),
        ([S.SUPPRESSED], False, False, "suppressed"),
    ],
)
def test_last_event_of_recipient_states(
    statuses: list[RecipientStatus], scheduled: bool, complained: bool, word: str
) -> None:
    assert last_event(statuses, scheduled, complained) == word


@pytest.mark.parametrize(
    ("error", "key_given", "status", "name", "kind"),
    [
        (
            ApiError(401, "unauthorized", "Missing API key"),
            False,
            401,
            "missing_api_key",
            rx.MissingApiKeyError,
        ),
        (
            ApiError(401, "unauthorized", "Invalid API key"),
            True,
            403,
            "invalid_api_key",
            rx.InvalidApiKeyError,
        ),
        (ApiError(403, "forbidden", "lacks read"), True, 401, "restricted_api_key", rx.ResendError),
        (
            ApiError(422, "invalid_field", "bad", "to[0]"),
            True,
            422,
            "validation_error",
            rx.ValidationError,
        ),
        (
            ApiError(422, MISSING, "Missing `from` field", "from"),
            True,
            422,
            "missing_required_field",
            rx.MissingRequiredFieldsError,
        ),
        (
            ApiError(400, "malformed_json", "not JSON"),
            True,
            400,
            "validation_error",
            rx.ValidationError,
        ),
        (
            ApiError(403, "sender_not_allowed", "no", "from"),
            True,
            403,
            "validation_error",
            rx.ResendError,
        ),
        (
            ApiError(409, "idempotency_conflict", "used", "Idempotency-Key"),
            True,
            409,
            "invalid_idempotent_request",
            rx.ResendError,
        ),
        (
            ApiError(422, "invalid_field", "1-255", "Idempotency-Key"),
            True,
            400,
            "invalid_idempotency_key",
            rx.ResendError,
        ),
        (
            ApiError(429, "rate_limited", "slow down"),
            True,
            429,
            "rate_limit_exceeded",
            rx.RateLimitError,
        ),
        (
            ApiError(429, "too_many_auth_failures", "locked"),
            True,
            429,
            "rate_limit_exceeded",
            rx.RateLimitError,
        ),
        (ApiError(404, "not_found", "No message X"), True, 404, "not_found", rx.ResendError),
        (ApiError(413, "too_large", "Body over"), True, 413, "validation_error", rx.ResendError),
        (
            ApiError(500, "internal", "Internal error"),
            True,
            500,
            "application_error",
            rx.ApplicationError,
        ),
        (ApiError(503, "unavailable", "retry"), True, 503, "application_error", rx.ResendError),
        (ApiError(403, "https_required", "use TLS"), True, 403, "https_required", rx.ResendError),
    ],
)
def test_each_error_raises_its_sdk_class(
    error: ApiError, key_given: bool, status: int, name: str, kind: type[rx.ResendError]
) -> None:
    """The error table, read by the SDK's own mapping from status and name to class."""
    code, body = error_body(error, key_given)
    assert (code, body["statusCode"], body["name"]) == (status, status, name)
    with pytest.raises(rx.ResendError) as raised:
        rx.raise_for_code_and_type(body["statusCode"], body["name"], body["message"])
    assert type(raised.value) is kind


# -- what a hostile review found (issue 18): each refused in Resend's shape, nothing stored


def test_a_lone_surrogate_is_a_400_never_a_500(mail: Mail, sdk: str) -> None:
    """json.loads kept "\\ud800" and the composer failed on it (500 for a whole batch)."""
    auth = {"Authorization": f"Bearer {sdk}", "Content-Type": "application/json"}
    one = b'{"from": "a@example.org", "to": "y@inbox.test", "subject": "\\ud800", "text": "x"}'
    good = b'{"from": "a@example.org", "to": "y@inbox.test", "text": "ok"}'
    for path, body, mode in (
        ("/emails", one, "strict"),
        ("/emails/batch", b"[" + good + b"," + one + b"]", "strict"),
        ("/emails/batch", b"[" + good + b"," + one + b"]", "permissive"),
    ):
        answer = mail.http.post(path, content=body, headers={**auth, "x-batch-validation": mode})
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["name"] == "validation_error"
        assert "not valid JSON" in answer.json()["message"]
    assert stored_subjects(mail) == []


def test_idempotency_key_tells_a_permissive_batch_from_a_strict_one(mail: Mail, sdk: str) -> None:
    """The same body under the same key in another x-batch-validation mode is another
    request: a strict repeat of a permissive batch with a bad item was answered 200."""
    auth = {"Authorization": f"Bearer {sdk}", "Idempotency-Key": "b-1"}
    later = "2039-01-01T00:00:00Z"
    batch = [
        {"from": FROM, "to": f"x@{INBOX}", "subject": "Kept", "text": "t", "scheduled_at": later},
        {"from": FROM, "to": "not an address", "subject": "Bad", "text": "t"},
    ]
    permissive = {**auth, "x-batch-validation": "permissive"}
    first = mail.http.post("/emails/batch", json=batch, headers=permissive)
    assert first.status_code == 200 and len(first.json()["data"]) == 1, first.text
    again = mail.http.post("/emails/batch", json=batch, headers=permissive)
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    for mode in ({}, {"x-batch-validation": "strict"}):
        strict = mail.http.post("/emails/batch", json=batch, headers={**auth, **mode})
        assert strict.status_code == 409, strict.text
        assert strict.json()["name"] == "invalid_idempotent_request"
    # strict said aloud and strict by default are the same request
    ok = batch[:1]
    first = mail.http.post("/emails/batch", json=ok, headers={**auth, "Idempotency-Key": "b-2"})
    again = mail.http.post(
        "/emails/batch",
        json=ok,
        headers={**auth, "Idempotency-Key": "b-2", "x-batch-validation": "Strict"},
    )
    assert again.status_code == 200 and again.json() == first.json()
    assert stored_subjects(mail) == ["Kept", "Kept"]


def test_the_list_reads_each_email_from_its_head(mail: Mail, sdk: str) -> None:
    big = "x" * 2_000_000
    sent = resend.Emails.send(
        {"from": FROM, "to": [f"x@{INBOX}"], "cc": [f"c@{INBOX}"], "subject": "Big", "text": big}
    )
    listed = mail.http.get("/emails", headers={"Authorization": f"Bearer {sdk}"})
    assert listed.status_code == 200, listed.text
    [email] = listed.json()["data"]
    assert email["id"] == sent["id"] and email["subject"] == "Big"
    assert email["to"] == [f"x@{INBOX}"] and email["cc"] == [f"c@{INBOX}"]
    assert email["text"] is None and email["html"] is None
