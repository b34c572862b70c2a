"""Postmark's two Python SDKs, unmodified, against a running mailgate: postmarker 1.0
(`PostmarkClient(..., root_api_url=...)`) and the official postmark-python 0.4
(`postmark.sync.ServerClient(..., base_url=...)`, retries=0 so an error is raised at
once). What they send is read back at the receiving sink; what they get back is parsed
by their own response handling (the official SDK's strict pydantic models)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import postmark.sync
import pytest
from postmark import (
    InactiveRecipientException,
    InvalidAPIKeyException,
    ServerException,
    ValidationException,
)
from postmark.models.outbound.enums import MessageEventType, MessageStatus
from postmark.models.outbound.schemas import MessageDetails
from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError

from mailgate import keys
from mailgate.errors import StoreError, StoreUnavailable
from mailgate.http.vendors.postmark_details import details
from mailgate.http.vendors.postmark_request import split_addresses
from mailgate.models import Message, Recipient, RecipientStatus, Scope, Source
from tests.vendors.conftest import INBOX, Mail

SENDER = "Shop <shop@example.org>"


def make_key(mail: Mail, *scopes: Scope, sandbox: bool = False) -> str:
    return mail.server.call(lambda s: keys.create_key(s, "pm", scopes, (), sandbox))[1]


def postmarker(mail: Mail, key: str | None = None) -> PostmarkClient:
    # root_api_url with a trailing slash, as Postmark's default has one
    return PostmarkClient(
        server_token=key or mail.server.send_key,
        root_api_url=mail.server.http_url + "/",
        timeout=30,
    )


def official(mail: Mail, key: str | None = None) -> postmark.sync.ServerClient:
    return postmark.sync.ServerClient(
        key or mail.server.send_key, retries=0, timeout=30, base_url=mail.server.http_url
    )


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def head_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def until(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 30) -> Any:
    """`read()` again until `done` holds for its value (delivery is asynchronous)."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    assert done(value), value
    return value


def test_postmarker_send_reaches_the_sink_with_every_field_and_bcc_only_in_the_envelope(
    mail: Mail,
) -> None:
    logo = b"\x89PNG\r\n\x1a\n not really"
    sent = postmarker(mail).emails.send(
        From=SENDER,
        To=f'"Doe, Ann" <ann@{INBOX}>, bob@{INBOX}',
        Cc=[f"carol@{INBOX}"],  # a list: postmarker joins it with commas
        Bcc=f"hidden@{INBOX}",
        Subject="Your receipt",
        Tag="receipts",
        HtmlBody='<p>Thanks <img src="cid:logo.png"></p>',
        TextBody="Thanks",
        Metadata={"order": "42"},
        ReplyTo=f"help@{INBOX}",
        Headers={"X-Campaign": "spring"},
        Attachments=[
            ("receipt.txt", b64(b"total: 3"), "text/plain"),
            {
                "Name": "logo.png",
                "Content": b64(logo),
                "ContentType": "image/png",
                "ContentID": "cid:logo.png",
            },
        ],
        MessageStream="outbound",
    )  # TrackOpens null and TrackLinks "None": postmarker's defaults
    assert set(sent) == {"To", "SubmittedAt", "MessageID", "ErrorCode", "Message"}
    assert sent["ErrorCode"] == 0 and sent["Message"] == "OK", sent
    assert sent["To"] == f'"Doe, Ann" <ann@{INBOX}>, bob@{INBOX}'

    [got] = mail.received(1)
    assert sorted(got.recipients) == sorted(
        f"{u}@{INBOX}" for u in ("ann", "bob", "carol", "hidden")
    )
    assert b"hidden@" not in head_of(got.data)
    message = parsed(got.data)
    assert "Bcc" not in message
    assert message["Subject"] == "Your receipt" and message["X-Campaign"] == "spring"
    assert [a.display_name for a in message["To"].addresses] == ["Doe, Ann", ""]
    assert message["Cc"] == f"carol@{INBOX}" and message["Reply-To"] == f"help@{INBOX}"
    assert message["From"].addresses[0].addr_spec == "shop@example.org"
    files = {p.get_filename(): p for p in message.walk() if p.get_filename()}
    assert files["receipt.txt"].get_content() == "total: 3"
    assert files["logo.png"]["Content-ID"] == "<logo.png>"
    assert files["logo.png"].get_content() == logo
    assert message.get_body(("plain",)).get_content().strip() == "Thanks"  # type: ignore[union-attr]

    stored = mail.admin("GET", f"/v1/messages/{sent['MessageID']}").json()
    assert stored["tags"] == ["receipts"] and stored["metadata"] == {"order": "42"}


def test_official_sdk_sends_one_and_a_batch_whose_bad_item_carries_all_five_fields(
    mail: Mail,
) -> None:
    with official(mail) as client:
        one = client.outbound.send(
            {
                "sender": SENDER,
                "to": f"one@{INBOX}",
                "subject": "One",
                "text_body": "1",
                "tag": "welcome",
                "metadata": {"user": "7"},
                "headers": [{"Name": "X-One", "Value": "1"}],
                "attachments": [
                    {"Name": "a.txt", "Content": b64(b"A"), "ContentType": "text/plain"}
                ],
            }
        )
        assert one.success and one.message == "OK" and one.to == f"one@{INBOX}"
        batch = client.outbound.send_batch(
            [
                {"sender": SENDER, "to": f"two@{INBOX}", "subject": "Two", "text_body": "2"},
                {"sender": SENDER, "to": "not an address", "subject": "Bad", "text_body": "x"},
                {
                    "sender": SENDER,
                    "to": f"three@{INBOX}",
                    "bcc": f"secret@{INBOX}",
                    "subject": "Three",
                    "html_body": "<b>3</b>",
                },
            ]
        )
    assert [b.error_code for b in batch] == [0, 300, 0]
    assert batch[1].message_id == "" and batch[1].to == "not an address"
    assert batch[1].message.startswith("To: invalid address 'not an address'"), batch[1].message
    assert len({one.message_id, batch[0].message_id, batch[2].message_id}) == 3

    got = {parsed(r.data)["Subject"]: r for r in mail.received(3)}
    assert set(got) == {"One", "Two", "Three"}
    first = parsed(got["One"].data)
    assert first["X-One"] == "1" and [p.get_filename() for p in first.iter_attachments()] == [
        "a.txt"
    ]
    assert sorted(got["Three"].recipients) == [f"secret@{INBOX}", f"three@{INBOX}"]
    assert b"secret@" not in head_of(got["Three"].data)
    stored = mail.admin("GET", f"/v1/messages/{one.message_id}").json()
    assert stored["tags"] == ["welcome"] and stored["metadata"] == {"user": "7"}


def test_postmarker_batch_answers_one_result_per_message(mail: Mail) -> None:
    results = postmarker(mail).emails.send_batch(
        {"From": SENDER, "To": f"a@{INBOX}", "Subject": "A", "TextBody": "a"},
        {"From": SENDER, "To": f"b@{INBOX}", "Subject": "B", "TextBody": "b", "Tag": "t"},
    )
    assert [r["ErrorCode"] for r in results] == [0, 0] and results[1]["To"] == f"b@{INBOX}"
    assert {parsed(r.data)["Subject"] for r in mail.received(2)} == {"A", "B"}


def test_errors_raise_each_sdks_own_exception_with_mailgates_message(mail: Mail) -> None:
    with pytest.raises(ClientError) as wrong:
        postmarker(mail, "mg_wrong_key").emails.send(From=SENDER, To=f"a@{INBOX}", TextBody="x")
    assert wrong.value.error_code == 10 and "Invalid API key" in str(wrong.value)
    with official(mail, "mg_wrong_key") as client, pytest.raises(InvalidAPIKeyException) as bad_key:
        client.outbound.send({"sender": SENDER, "to": f"a@{INBOX}", "text_body": "x"})
    assert bad_key.value.http_status == 401

    with pytest.raises(ClientError) as bad_from:
        postmarker(mail).emails.send(From="nobody", To=f"a@{INBOX}", TextBody="x")
    assert bad_from.value.error_code == 300 and "[300] From: " in str(bad_from.value)
    with official(mail) as client:
        with pytest.raises(ValidationException) as bad_to:
            client.outbound.send({"sender": SENDER, "to": f"a@{INBOX}, b@", "text_body": "x"})
        assert bad_to.value.error_code == 300 and "To: invalid address 'b@'" in bad_to.value.message
        with pytest.raises(ValidationException) as no_text:
            client.outbound.send({"sender": SENDER, "to": f"a@{INBOX}", "subject": "s"})
        assert no_text.value.message == "TextBody: Give TextBody, HtmlBody or both"

    org_only = mail.server.restricted_key  # may send only From example.org
    with pytest.raises(ClientError) as foreign:
        postmarker(mail, org_only).emails.send(From="me@other.test", To=f"a@{INBOX}", TextBody="x")
    assert foreign.value.error_code == 400 and "not allowed for this key" in str(foreign.value)
    with official(mail, org_only) as client, pytest.raises(ValidationException) as refused:
        client.outbound.send({"sender": "me@other.test", "to": f"a@{INBOX}", "text_body": "x"})
    assert refused.value.error_code == 400 and refused.value.http_status == 422
    assert mail.script.received == []


def test_a_message_to_suppressed_recipients_only_is_postmarks_406_and_is_not_stored(
    mail: Mail,
) -> None:
    listed = mail.admin(
        "POST", "/v1/suppressions", json={"suppressions": [{"address": f"gone@{INBOX}"}]}
    )
    assert listed.status_code in (200, 201), listed.text
    with pytest.raises(ClientError) as inactive:
        postmarker(mail).emails.send(From=SENDER, To=f"gone@{INBOX}", TextBody="x")
    assert inactive.value.error_code == 406
    with official(mail) as client:
        with pytest.raises(InactiveRecipientException) as official_inactive:
            client.outbound.send({"sender": SENDER, "to": f"GONE@{INBOX}", "text_body": "x"})
        assert official_inactive.value.inactive_recipients == [f"GONE@{INBOX}"]
        partly = client.outbound.send(
            {
                "sender": SENDER,
                "to": f"gone@{INBOX}, here@{INBOX}",
                "subject": "Partly",
                "text_body": "x",
            }
        )
        batch = client.outbound.send_batch(
            [
                {"sender": SENDER, "to": f"gone@{INBOX}", "text_body": "x"},
                {"sender": SENDER, "to": f"there@{INBOX}", "subject": "Batch", "text_body": "x"},
            ]
        )
    assert partly.error_code == 0 and partly.message == (
        f"Message OK, but will not deliver to these inactive addresses: gone@{INBOX}."
    )
    assert [b.error_code for b in batch] == [406, 0] and batch[0].message_id == ""
    received = mail.received(2)
    assert sorted(r.recipients[0] for r in received) == [f"here@{INBOX}", f"there@{INBOX}"]
    stored = mail.admin("GET", "/v1/messages", params={"recipient": f"gone@{INBOX}"}).json()["data"]
    assert [m["id"] for m in stored] == [partly.message_id]  # the 406s were never stored


def test_fields_mailgate_cannot_honour_are_refused_by_name(mail: Mail) -> None:
    client = postmarker(mail)
    base: dict[str, Any] = {"From": SENDER, "To": f"a@{INBOX}", "TextBody": "x"}
    for extra, field in (
        ({"TrackOpens": True}, "TrackOpens"),
        ({"TrackLinks": "HtmlAndText"}, "TrackLinks"),
        ({"MessageStream": "broadcast"}, "MessageStream"),
        ({"Headers": {"Message-ID": "<x@y>"}}, "Headers"),
    ):
        with pytest.raises(ClientError) as refused:
            client.emails.send(**base, **extra)
        assert refused.value.error_code == 300 and f"[300] {field}" in str(refused.value), extra
    with official(mail) as sdk, pytest.raises(ValidationException) as tracked:
        sdk.outbound.send(
            {"sender": SENDER, "to": f"a@{INBOX}", "text_body": "x", "track_links": "HtmlOnly"}
        )
    assert tracked.value.message.startswith("TrackLinks: link tracking is not supported")
    # the defaults both SDKs send pass: TrackOpens false, TrackLinks "None"
    fine = client.emails.send(**base, TrackOpens=False, TrackLinks="None", Subject="Defaults")
    assert fine["ErrorCode"] == 0
    [got] = mail.received(1)
    assert parsed(got.data)["Subject"] == "Defaults"


def test_details_read_back_in_postmarks_shape_with_both_sdks(mail: Mail) -> None:
    key = make_key(mail, Scope.SEND, Scope.READ, sandbox=True)  # captured, never sent
    with official(mail, key) as client:
        sent = client.outbound.send(
            {
                "sender": SENDER,
                "to": "Ann <ann@example.com>",
                "cc": "cc@example.com",
                "bcc": "hidden@example.com",
                "subject": "Read me",
                "text_body": "plain",
                "html_body": "<p>html</p>",
                "tag": "t1",
                "metadata": {"k": "v"},
                "attachments": [
                    {"Name": "a.txt", "Content": b64(b"A"), "ContentType": "text/plain"}
                ],
            }
        )
        found = until(
            lambda: client.outbound.get(sent.message_id),
            lambda d: d.status == MessageStatus.SENT and len(d.message_events) == 3,
        )
    assert found.message_id == sent.message_id and found.subject == "Read me"
    assert [(a.email, a.name) for a in found.to] == [("ann@example.com", "Ann")]
    assert [a.email for a in found.cc] == ["cc@example.com"]
    assert [a.email for a in found.bcc] == ["hidden@example.com"]
    assert sorted(found.recipients) == ["ann@example.com", "cc@example.com", "hidden@example.com"]
    assert found.tag == "t1" and found.metadata == {"k": "v"} and found.sandboxed
    assert found.text_body.strip() == "plain" and found.attachments == ["a.txt"]
    assert {e.type for e in found.message_events} == {MessageEventType.DELIVERED}

    pm = postmarker(mail, key)
    bounced = pm.emails.send(From=SENDER, To="bounced@simulator.mailgate.test", TextBody="x")
    details = until(
        lambda: pm.messages.outbound.get(bounced["MessageID"]),
        lambda d: d.Status != "Queued",
    )
    assert details.Status == "Sent" and details.MessageStream == "outbound"
    [event] = details.MessageEvents
    assert event["Type"] == "Bounced" and event["Details"]["Summary"].startswith("550 5.1.1")
    with pytest.raises(ClientError) as missing:
        pm.messages.outbound.get("0" * 26)
    assert missing.value.error_code == 701
    with pytest.raises(ClientError) as send_only:
        postmarker(mail).messages.outbound.get(sent.message_id)  # a key without read scope
    assert send_only.value.error_code == 10 and "read scope" in str(send_only.value)


Case = tuple[str, bytes | str, int, int, str]


def test_hostile_bodies_get_postmarks_error_shape_never_a_500(mail: Mail) -> None:
    headers = {"X-Postmark-Server-Token": mail.server.send_key, "Content-Type": "application/json"}
    item = f'{{"From": "a@example.org", "To": "b@{INBOX}", "TextBody": "x"}}'
    cases: list[Case] = [
        ("/email", b"{not json", 422, 402, "not valid JSON"),
        ("/email", b"\xff\xfe", 422, 402, "not valid JSON"),
        ("/email", b"[" * 100_000, 422, 402, "not valid JSON"),
        ("/email", f"[{item}]", 422, 300, "JSON object"),
        ("/email", "{}", 422, 300, "From: Field required"),
        ("/email", '{"From": 5, "To": "b@x.org", "TextBody": "x"}', 422, 300, "From: Input should"),
        (
            "/email",
            item[:-1] + ', "Headers": "x"}',
            422,
            300,
            "Headers: Input should be a valid list",
        ),
        (
            "/email",
            item[:-1] + ', "Headers": [{"Name": "X-A"}]}',
            422,
            300,
            "Headers[0].Value: Field",
        ),
        ("/email", item[:-1] + ', "Metadata": {"k": 1}}', 422, 300, "Metadata.k: Input should"),
        ("/email", item[:-1] + ', "TrackOpens": "yes"}', 422, 300, "TrackOpens: Input should"),
        (
            "/email",
            item[:-1] + ', "Attachments": [{"Name": "a", "Content": "%%%"}]}',
            422,
            300,
            "Attachments[0].Content: must be valid base64",
        ),
        (
            "/email",
            item[:-1] + ', "Subject": "' + "s" * 100_000 + '"}',
            422,
            300,
            "Subject: Value should have at most 998",
        ),
        (
            "/email",
            item[:-1] + ', "Subject": "a\\r\\nBcc: x@y.org"}',
            422,
            300,
            "Subject: must not contain",
        ),
        (
            "/email",
            item[:-1]
            + ', "Headers": [{"Name": "X-A", "Value": "1"}, {"Name": "x-a", "Value": "2"}]}',
            422,
            300,
            "Headers[1].Name: header x-a is given twice",
        ),
        (
            "/email",
            item[:-1] + ', "Headers": [{"Name": "X-A", "Value": "1\\n2"}]}',
            422,
            300,
            "Headers[0].Value: must not",
        ),
        ("/email", item[:-1] + ', "Unknown": 1}', 422, 300, "Unknown: unknown field"),
        (
            "/email",
            item[:-1] + ', "To": "' + ", ".join(f"r{i}@{INBOX}" for i in range(2000)) + '"}',
            422,
            300,
            "To: At most",
        ),
        ("/email/batch", item, 422, 300, "JSON array"),
        ("/email/batch", "[" + ",".join([item] * 501) + "]", 422, 410, "at most 500"),
    ]
    for path, body, status, code, words in cases:
        answer = mail.http.post(path, content=body, headers=headers)
        assert answer.status_code == status, (path, str(body)[:80], answer.text[:300])
        assert answer.headers["content-type"] == "application/json", answer.headers
        found = answer.json()
        assert found["ErrorCode"] == code and words in found["Message"], (str(body)[:80], found)

    batch = mail.http.post("/email/batch", content=f'[5, {item}, {{"To": "x"}}]', headers=headers)
    assert batch.status_code == 200, batch.text
    first, ok, missing = batch.json()
    assert first["ErrorCode"] == 300 and first["To"] == "" and first["MessageID"] == ""
    assert ok["ErrorCode"] == 0 and missing["Message"] == "From: Field required"
    assert missing["To"] == "x"

    too_big = mail.http.post("/email", content=b"x" * (41 * 1024 * 1024), headers=headers)
    assert too_big.status_code == 413 and too_big.json()["ErrorCode"] == 300
    xml = mail.http.post("/email", content=item, headers={**headers, "Content-Type": "text/xml"})
    assert xml.status_code == 422 and xml.json()["ErrorCode"] == 409
    bearer = {"Authorization": f"Bearer {mail.server.send_key}", "Content-Type": "application/json"}
    missing_token = mail.http.post("/email", content=item, headers=bearer)
    assert missing_token.status_code == 401 and missing_token.json()["ErrorCode"] == 10
    assert "X-Postmark-Server-Token" in missing_token.json()["Message"]


def test_idempotency_key_and_repeated_slashes(mail: Mail) -> None:
    headers = {
        "X-Postmark-Server-Token": mail.server.send_key,
        "Content-Type": "application/json",
        "Idempotency-Key": "order-42",
    }
    body = {"From": SENDER, "To": f"once@{INBOX}", "Subject": "Once", "TextBody": "x"}
    first = mail.http.post(mail.server.http_url + "//email", json=body, headers=headers)
    again = mail.http.post("/email", json=body, headers=headers)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert first.json() == again.json() and again.headers["Idempotent-Replayed"] == "true"
    other = mail.http.post("/email", json={**body, "Subject": "Twice"}, headers=headers)
    assert other.status_code == 409 and other.json()["ErrorCode"] == 300
    [got] = mail.received(1)
    assert parsed(got.data)["Subject"] == "Once"
    admin = {"X-Postmark-Server-Token": mail.admin_key}
    unknown = mail.http.get(mail.server.http_url + "//messages//outbound/x/details", headers=admin)
    assert unknown.status_code == 404 and unknown.json()["ErrorCode"] == 701


def test_a_store_that_cannot_commit_is_a_retryable_503_and_a_bug_a_json_500(mail: Mail) -> None:
    one = {"From": SENDER, "To": f"a@{INBOX}", "TextBody": "x"}
    with mail.server.failing_enqueue(StoreUnavailable("disk full")):
        with pytest.raises(ClientError) as full:
            postmarker(mail).emails.send(**one)
        with official(mail) as client, pytest.raises(ServerException) as official_full:
            client.outbound.send_batch([{"sender": SENDER, "to": f"a@{INBOX}", "text_body": "x"}])
    assert full.value.error_code == 100 and official_full.value.http_status == 503
    headers = {"X-Postmark-Server-Token": mail.server.send_key}
    with mail.server.failing_enqueue(StoreError("cannot read")):
        broken = mail.http.post("/email", json=one, headers=headers)
    assert broken.status_code == 503 and broken.headers["Retry-After"] == "5"
    with mail.server.failing_enqueue(RuntimeError("secret internal detail")):
        bug = mail.http.post("/email", json=one, headers=headers)
    assert bug.status_code == 500 and bug.json() == {"ErrorCode": 0, "Message": "Internal error"}
    assert mail.script.received == []


# -- the translations alone (no server) ------------------------------------------------


def test_recipient_strings_split_on_commas_outside_quotes_and_brackets() -> None:
    assert split_addresses(None) == [] and split_addresses(" , ") == []
    assert split_addresses("a@x.org,b@y.org , ") == ["a@x.org", "b@y.org"]
    assert split_addresses('"Doe, Ann" <a@x.org>, b@y.org') == ['"Doe, Ann" <a@x.org>', "b@y.org"]
    assert split_addresses('"Say \\"hi, there\\"" <a@x.org>,c@z.org') == [
        '"Say \\"hi, there\\"" <a@x.org>',
        "c@z.org",
    ]
    assert split_addresses("Ann (work, main) <a@x.org>, b@y.org") == [
        "Ann (work, main) <a@x.org>",
        "b@y.org",
    ]


def stored(
    *statuses: RecipientStatus, scheduled_at: float | None = None
) -> tuple[Message, list[Recipient]]:
    message = Message(
        "01J9Z5Q8R3T0W6Y2B4D7F1H5K9",
        "shop@example.org",
        Source.HTTP,
        "k",
        ("t",),
        {},
        "<x@y>",
        None,
        scheduled_at,
        1_000.0,
        10,
    )
    recipients = [
        Recipient(
            i, message.id, f"r{i}@example.com", "example.com", s, 0, None, None, None, None, 0.0
        )
        for i, s in enumerate(statuses)
    ]
    return message, recipients


@pytest.mark.parametrize(
    ("statuses", "scheduled_at", "word"),
    [
        ((RecipientStatus.QUEUED,), None, "Queued"),
        ((RecipientStatus.QUEUED,), 2_000.0, "Scheduled"),
        ((RecipientStatus.DELIVERED, RecipientStatus.DEFERRED), None, "Queued"),
        ((RecipientStatus.DELIVERED, RecipientStatus.SUPPRESSED), None, "Sent"),
        ((RecipientStatus.BOUNCED,), None, "Sent"),
        ((RecipientStatus.EXPIRED, RecipientStatus.CANCELLED), None, "Failed"),
        ((RecipientStatus.CANCELLED, RecipientStatus.SUPPRESSED), None, "Blocked"),
    ],
)
def test_details_say_postmarks_status_and_satisfy_the_official_model(
    statuses: tuple[RecipientStatus, ...], scheduled_at: float | None, word: str
) -> None:
    message, recipients = stored(*statuses, scheduled_at=scheduled_at)
    answer = details(message, recipients, [], None, now=1_500.0)  # a body retention purged
    assert answer["Status"] == word and answer["Subject"] == "" and answer["Bcc"] == []
    model = MessageDetails.model_validate(answer)
    assert model.status == MessageStatus(word) and len(model.recipients) == len(statuses)


def test_a_draining_server_answers_503_before_asking_for_the_token(mail: Mail) -> None:
    """Postmark's token was looked for before the draining check: 401 while draining."""
    one = {"From": SENDER, "To": f"a@{INBOX}", "TextBody": "x"}
    missing = mail.http.post("/email", json=one)
    assert missing.status_code == 401 and "X-Postmark-Server-Token" in missing.json()["Message"]
    mail.server.app.lifecycle.drain()
    for path, body in (("/email", one), ("/email/batch", [one])):
        draining = mail.http.post(path, json=body)
        assert draining.status_code == 503 and draining.headers["Retry-After"] == "5"
        assert draining.json()["ErrorCode"] == 100
    details = mail.http.get("/messages/outbound/00000000000000000000000000/details")
    assert details.status_code == 503 and details.json()["ErrorCode"] == 100
