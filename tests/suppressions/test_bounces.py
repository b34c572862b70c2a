"""Bounce classes through the real door and a scripted receiving server: a failure of
the address (550 5.1.1, or a bare 550 saying the user is unknown) puts it on the list,
a failure of the message (552 5.2.2 full, 552 5.3.4 size, 554 5.7.1 policy, 554 5.6.0
content at end of data) does not; the next message to a listed address is stopped at
the door with its event and webhook, and a domain-scoped entry stops only that
domain's mail."""

from __future__ import annotations

import smtplib
import ssl
import time

import pytest
from standardwebhooks import Webhook

from tests.domains.conftest import INBOX, Mail
from tests.events.receiver import Receiver
from tests.suppressions.conftest import HOOKS, call, hook, make_key, send

ADDRESS_FAILURES = ("reject-1", "unknown-1")  # 550 5.1.1; 550 "No such user here"
MESSAGE_FAILURES = ("full-1", "toobig-1", "policy-1", "datafail-1")


def statuses(mail: Mail, key: str, message_id: str, until: set[str], timeout: float = 30) -> dict:
    """address -> status, once no recipient is in a status outside `until`."""
    deadline = time.monotonic() + timeout
    while True:
        got = call(mail, key, "GET", f"/v1/messages/{message_id}").json()
        found = {r["address"]: r["status"] for r in got["recipients"]}
        if set(found.values()) <= until or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.parametrize("mail", [{"webhooks": HOOKS}], indirect=True)
def test_address_failures_suppress_message_failures_do_not(mail: Mail, got: Receiver) -> None:
    key = make_key(mail, "app")
    secret = hook(mail, key, got, ["message.bounced", "message.suppressed"])
    to = [f"{local}@{INBOX}" for local in (*ADDRESS_FAILURES, *MESSAGE_FAILURES)]
    first = send(mail, key, to)
    assert {r["status"] for r in first["recipients"]} == {"queued"}
    found = statuses(mail, key, first["id"], {"bounced"})
    assert set(found.values()) == {"bounced"}, found

    listed = call(mail, key, "GET", "/v1/suppressions").json()["data"]
    assert {e["address"] for e in listed} == {f"{a}@{INBOX}" for a in ADDRESS_FAILURES}
    assert {e["reason"] for e in listed} == {"hard_bounce"}
    assert {e["message_id"] for e in listed} == {first["id"]}
    assert all(e["domain"] is None for e in listed)

    second = send(mail, key, to)
    answered = {r["address"]: r for r in second["recipients"]}
    for local in ADDRESS_FAILURES:
        assert answered[f"{local}@{INBOX}"] == {
            "address": f"{local}@{INBOX}",
            "status": "suppressed",
            "reason": "hard_bounce",
        }
    for local in MESSAGE_FAILURES:
        assert answered[f"{local}@{INBOX}"]["status"] == "queued"
    after = statuses(mail, key, second["id"], {"bounced", "suppressed"})
    assert sorted(after.values()) == ["bounced"] * 4 + ["suppressed"] * 2
    timeline = call(mail, key, "GET", f"/v1/messages/{second['id']}").json()["events"]
    assert sum(e["kind"] == "suppressed" for e in timeline) == 2

    # 6 bounces of the first message, 2 suppressions and 4 bounces of the second
    posts = got.wait(12)
    bodies = [Webhook(secret).verify(p.body, p.headers) for p in posts]
    told = [b for b in bodies if b["type"] == "message.suppressed"]
    assert len(told) == 2
    assert {b["data"]["recipient"] for b in told} == {f"{a}@{INBOX}" for a in ADDRESS_FAILURES}
    assert {b["data"]["reason"] for b in told} == {"hard_bounce"}
    assert all(b["data"]["message_id"] == second["id"] for b in told)
    assert len(mail.script.received) == 0, "nothing got through: every address fails"


def test_a_scoped_entry_stops_only_its_domains_mail(mail: Mail) -> None:
    key = make_key(mail, "app")
    added = call(
        mail,
        key,
        "POST",
        "/v1/suppressions",
        json={"address": f"Reader@{INBOX}", "reason": "unsubscribe", "domain": "brand-a.test"},
    )
    assert added.status_code == 201, added.text
    assert added.json()["data"][0]["address"] == f"reader@{INBOX}"
    stopped = send(mail, key, [f"reader@{INBOX}"], sender="news@brand-a.test")
    sub = send(mail, key, [f"READER@{INBOX}"], sender="news@mail.brand-a.test")
    other = send(mail, key, [f"reader@{INBOX}"], sender="news@brand-b.test")
    assert stopped["recipients"][0]["status"] == "suppressed"
    assert stopped["recipients"][0]["reason"] == "unsubscribe"
    assert sub["recipients"][0]["status"] == "suppressed", "a subdomain's mail is the brand's"
    assert other["recipients"][0]["status"] == "queued"
    [delivered] = mail.received(1)
    assert b"news@brand-b.test" in delivered.data
    assert statuses(mail, key, other["id"], {"delivered"}) == {f"reader@{INBOX}": "delivered"}


def test_every_recipient_suppressed_is_still_accepted_and_said(mail: Mail) -> None:
    """The choice (docs/suppressions.md): accepted, each recipient `suppressed`, over
    HTTP (202) and SMTP (250 naming the count); nothing is delivered."""
    key = make_key(mail, "app")
    entries = [{"address": f"a@{INBOX}"}, {"address": f"b@{INBOX}", "reason": "complaint"}]
    assert (
        call(mail, key, "POST", "/v1/suppressions", json={"suppressions": entries}).status_code
        == 201
    )
    sent = send(mail, key, [f"a@{INBOX}", f"b@{INBOX}"])
    assert [(r["status"], r["reason"]) for r in sent["recipients"]] == [
        ("suppressed", "manual"),
        ("suppressed", "complaint"),
    ]
    ctx = ssl.create_default_context()
    mail.server.ca.configure_trust(ctx)
    with smtplib.SMTP("127.0.0.1", mail.server.smtp_port, timeout=30) as s:
        s.starttls(context=ctx)
        s.login("app", key)
        s.mail("app@example.org")
        s.rcpt(f"a@{INBOX}")
        s.rcpt(f"c@{INBOX}")
        code, text = s.data(b"From: app@example.org\r\nSubject: s\r\n\r\nt\r\n")
        assert code == 250 and text.endswith(b"(1 recipient suppressed, not sent)"), text
    counts = mail.server.call(lambda st: st.status_counts())
    assert counts["suppressed"] == 3
    assert mail.received(1)[0].recipients == [f"c@{INBOX}"]
    deadline = time.monotonic() + 30  # every recipient final: nothing more can be sent
    while time.monotonic() < deadline:
        counts = mail.server.call(lambda st: st.status_counts())
        if counts["queued"] == counts["deferred"] == 0:
            break
        time.sleep(0.05)
    assert counts["queued"] == counts["deferred"] == 0, counts
    assert len(mail.script.received) == 1, "a suppressed address gets nothing"


def test_only_a_reply_to_the_recipients_own_rcpt_lists_it(mail: Mail) -> None:
    """A refusal of the *sender* at MAIL FROM (Postfix's reject_unlisted_sender says "5.1.0
    User unknown"), an address code after the final dot, and an NXDOMAIN (a lapse or a
    spoofed answer) bounce without listing anyone; a null MX (the domain says it takes
    no mail) lists the address."""
    mail.zone.add("nullmx.test", "MX", (0, "."))
    key = make_key(mail, "app")
    by_sender = send(mail, key, [f"ok-1@{INBOX}", f"ok-2@{INBOX}"], sender="unlisted@example.org")
    after_dot = send(mail, key, [f"dataunknown-1@{INBOX}"])
    domains = send(mail, key, ["someone@nullmx.test", "someone@nxdomain.test"])
    for sent in (by_sender, after_dot, domains):
        found = statuses(mail, key, sent["id"], {"bounced"})
        assert set(found.values()) == {"bounced"}, found
    listed = call(mail, key, "GET", "/v1/suppressions").json()["data"]
    assert [(e["address"], e["reason"]) for e in listed] == [("someone@nullmx.test", "hard_bounce")]
    last = call(mail, key, "GET", f"/v1/messages/{by_sender['id']}").json()["recipients"]
    assert all("Sender address rejected" in r["last_reply"] for r in last)


def test_an_address_listed_after_acceptance_is_not_sent_at_its_time_or_retry(
    mail: Mail,
) -> None:
    import datetime

    key = make_key(mail, "app")
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)
    scheduled = call(
        mail,
        key,
        "POST",
        "/v1/messages",
        json={
            "from": "app@example.org",
            "to": [f"later@{INBOX}", f"kept@{INBOX}"],
            "subject": "s",
            "text": "t",
            "scheduled_at": later.isoformat(),
        },
    ).json()
    retried = send(mail, key, [f"tempfail-once-1@{INBOX}"])
    assert statuses(mail, key, retried["id"], {"deferred"}) == {
        f"tempfail-once-1@{INBOX}": "deferred"
    }
    entries = [
        {"address": f"later@{INBOX}", "reason": "unsubscribe"},
        {"address": f"tempfail-once-1@{INBOX}"},
    ]
    assert (
        call(mail, key, "POST", "/v1/suppressions", json={"suppressions": entries}).status_code
        == 201
    )
    assert statuses(mail, key, scheduled["id"], {"delivered", "suppressed"}) == {
        f"later@{INBOX}": "suppressed",
        f"kept@{INBOX}": "delivered",
    }
    assert statuses(mail, key, retried["id"], {"suppressed"}) == {
        f"tempfail-once-1@{INBOX}": "suppressed"
    }
    events = call(mail, key, "GET", f"/v1/messages/{scheduled['id']}").json()["events"]
    [stopped] = [e for e in events if e["kind"] == "suppressed"]
    assert (
        stopped["recipient"] == f"later@{INBOX}" and stopped["details"]["reason"] == "unsubscribe"
    )
    assert [r.recipients for r in mail.received(1)] == [[f"kept@{INBOX}"]]
