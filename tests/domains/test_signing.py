"""Sending domains end to end through the real server: records answered, verified over a
DNS server on loopback, and every way in (HTTP single, batch, raw, SMTP relay) signed
with both keys, as the receiving sink got it, by two verifiers mailgate does not use to
sign (Perl's Mail::DKIM and dkimpy)."""

from __future__ import annotations

import base64
import smtplib
from email.message import EmailMessage

import pytest

from tests.dkim_oracles import Verdict, dkimpy, mail_dkim
from tests.domains.conftest import INBOX, Mail

BOTH = {"rsa-sha256", "ed25519-sha256"}


def verdicts(message: bytes, dns_port: int) -> list[tuple[str, list[Verdict]]]:
    return [("Mail::DKIM", mail_dkim(message, dns_port)), ("dkimpy", dkimpy(message, dns_port))]


def assert_signed(message: bytes, dns_port: int, domain: str = "example.org") -> None:
    """Both signatures there, by the domain, and both verifiers say pass for each."""
    assert message.count(b"DKIM-Signature:") == 2, message[:600]
    for oracle, found in verdicts(message, dns_port):
        assert {v.algorithm for v in found} == BOTH, (oracle, found)
        assert all(v.result == "pass" and v.domain == domain for v in found), (oracle, found)


def assert_broken(message: bytes, dns_port: int) -> None:
    for oracle, found in verdicts(message, dns_port):
        assert len(found) == 2 and all(v.result == "fail" for v in found), (oracle, found)


def one_byte_changed(message: bytes, old: bytes, new: bytes) -> bytes:
    at = message.rindex(old)
    return message[:at] + new + message[at + len(old) :]


def test_a_domain_added_answers_its_records_and_never_its_private_keys(mail: Mail) -> None:
    added = mail.admin("POST", "/v1/domains", json={"name": "Example.ORG."})
    assert added.status_code == 201, added.text
    body = added.json()
    assert body["name"] == "example.org" and body["status"] == "pending"
    by_purpose: dict[str, list[dict[str, str]]] = {}
    for r in body["records"]:
        by_purpose.setdefault(r["purpose"], []).append(r)
        assert r["status"] == "pending"
    dkim = {r["algorithm"]: r for r in by_purpose["dkim"]}
    assert set(dkim) == BOTH
    assert dkim["rsa-sha256"]["value"].startswith("v=DKIM1; k=rsa; p=MII")
    assert dkim["ed25519-sha256"]["value"].startswith("v=DKIM1; k=ed25519; p=")
    for r in dkim.values():
        assert r["name"] == f"{r['selector']}._domainkey.example.org"
    ed_key = dkim["ed25519-sha256"]["value"].split("p=")[1]
    assert len(base64.b64decode(ed_key)) == 32
    [spf] = by_purpose["spf"]
    assert spf["name"] == "example.org" and spf["value"] == "v=spf1 a:mx.mailgate.test ~all"
    [dmarc] = by_purpose["dmarc"]
    assert dmarc["value"] == "v=DMARC1; p=none; rua=mailto:dmarc-reports@example.org"
    text = added.text + mail.admin("GET", "/v1/domains").text
    assert "PRIVATE" not in text and "private" not in text

    again = mail.admin("POST", "/v1/domains", json={"name": "example.org"})
    assert again.status_code == 409 and again.json()["error"]["field"] == "name"
    bad = mail.admin("POST", "/v1/domains", json={"name": "not a domain"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "name"
    missing = mail.admin("POST", "/v1/domains", json={})
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "name"
    send_only = mail.http.get(
        "/v1/domains", headers={"Authorization": f"Bearer {mail.server.send_key}"}
    )
    assert send_only.status_code == 403
    assert mail.admin("GET", "/v1/domains/nowhere.example").status_code == 404
    assert mail.admin("DELETE", "/v1/domains/example.org").json() == {"deleted": True}
    assert mail.admin("GET", "/v1/domains/example.org").status_code == 404


def test_the_private_keys_are_stored_sealed_and_the_key_file_is_private(mail: Mail) -> None:
    mail.admin("POST", "/v1/domains", json={"name": "example.org"})
    store = mail.server.app.store
    assert store is not None
    db = store.path  # type: ignore[attr-defined]
    import sqlite3

    with sqlite3.connect(db) as conn:
        sealed = [r[0] for r in conn.execute("SELECT private_key FROM domain_keys")]
    assert len(sealed) == 2
    for token in sealed:
        assert "PRIVATE" not in token and not token.startswith("-----")
    key_file = mail.server.app.config.data_dir / "secret.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_every_way_in_is_signed_with_both_keys_and_verifies(mail: Mail) -> None:
    mail.add_verified("example.org")
    auth = {"Authorization": f"Bearer {mail.server.send_key}"}
    to = f"someone@{INBOX}"
    attachment = base64.b64encode(bytes(range(256)) * 40).decode()
    single = mail.http.post(
        "/v1/messages",
        headers=auth,
        json={
            "from": "Ünïcödé Sender <hello@example.org>",
            "to": [to],
            "cc": [f"copy@{INBOX}"],
            "reply_to": "replies@example.org",
            "subject": "Grüße — a long subject " + "x" * 200,
            "text": "plain  text   with\trunning   spaces   \n\n\n",
            "html": "<p>" + "long html line " * 200 + "</p>",
            "headers": {"List-Unsubscribe": "<mailto:unsubscribe@example.org>"},
            "attachments": [
                {"filename": "b.bin", "content": attachment, "content_type": "application/x-b"}
            ],
        },
    )
    assert single.status_code == 202, single.text
    batch = mail.http.post(
        "/v1/messages/batch",
        headers=auth,
        json={
            "messages": [
                {"from": "a@example.org", "to": [to], "subject": f"b{i}", "text": "hi\n"}
                for i in range(2)
            ]
        },
    )
    assert batch.status_code == 202, batch.text
    long_line = b"8-bit \xc3\xa9t\xc3\xa9 and a long line " + b"y" * 960  # under 998
    raw = (
        b"From: Raw <raw@news.example.org>\r\nTo: someone@inbox.test\r\nSubject: raw\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + long_line + b"\r\n.leading dot\r\n"
    )
    sent_raw = mail.http.post(
        "/v1/messages/raw",
        headers=auth,
        json={"raw": base64.b64encode(raw).decode(), "from": "raw@news.example.org", "to": [to]},
    )
    assert sent_raw.status_code == 202, sent_raw.text
    relayed = EmailMessage()
    relayed["From"] = "relay@example.org"
    relayed["To"] = to
    relayed["Subject"] = "over the relay"
    relayed.set_content("a body\nwith a line ending in spaces   \n.\n..two dots\n")
    with smtplib.SMTP("127.0.0.1", mail.server.smtp_port, timeout=30) as smtp:
        smtp.send_message(relayed)
    unsigned = mail.http.post(
        "/v1/messages",
        headers=auth,
        json={"from": "x@elsewhere.example", "to": [to], "subject": "u", "text": "t"},
    )
    assert unsigned.status_code == 202

    got = mail.received(6)
    by_subject = {}
    for r in got:
        head = r.data.split(b"\r\n\r\n", 1)[0]
        subject = next(ln for ln in head.split(b"\r\n") if ln.startswith(b"Subject:"))
        by_subject[subject[9:].split()[0]] = r.data
    for key in (b"=?utf-8?q?Gr=C3=BC=C3=9Fe_=E2=80=94_a_long_subject", b"b0", b"b1", b"raw"):
        assert any(k.startswith(key[:5]) for k in by_subject), (key, list(by_subject))
    signed = [d for k, d in by_subject.items() if k != b"u"]
    assert len(signed) == 5
    for data in signed:
        assert_signed(data, mail.dns_port)
    assert b"DKIM-Signature" not in by_subject[b"u"]
    # nothing may change after signing: one byte in the body or in a signed header fails
    for data in signed[:2]:
        assert_broken(one_byte_changed(data, b"\r\n\r\n", b"\r\n\r\n "), mail.dns_port)
    relay = next(d for d in signed if b"over the relay" in d)
    assert_broken(relay.replace(b"over the relay", b"over the reIay"), mail.dns_port)


def test_each_record_state_is_told_apart(mail: Mail) -> None:
    added = mail.admin("POST", "/v1/domains", json={"name": "example.org"}).json()
    dkim = [r for r in added["records"] if r["purpose"] == "dkim"]

    def status() -> dict[str, dict[str, object]]:
        body = mail.admin("POST", "/v1/domains/example.org/verify").json()
        return {r["id"]: r for r in body["records"]} | {"domain": body}

    found = status()
    assert {found[r["id"]]["status"] for r in dkim} == {"missing"}
    assert found["spf"]["status"] == "missing" and found["domain"]["status"] == "failed"

    # mismatched: another key under the selector, another SPF, two DMARC records
    for r in dkim:
        mail.zone.add(r["name"], "TXT", "v=DKIM1; k=rsa; p=QUJDRA==")
    mail.zone.add("example.org", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    mail.zone.add("_dmarc.example.org", "TXT", "v=DMARC1; p=none")
    mail.zone.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    found = status()
    for r in dkim:
        assert found[r["id"]]["status"] == "mismatched"
        assert found[r["id"]]["found"] == ["v=DKIM1; k=rsa; p=QUJDRA=="]
    assert found["spf"]["status"] == "mismatched"
    assert found["spf"]["found"] == ["v=spf1 ip4:192.0.2.1 -all"]
    assert found["dmarc"]["status"] == "mismatched"
    assert found["domain"]["sending"] is False

    # verified: the right values (an SPF record with more mechanisms than asked is fine)
    for name in [r["name"] for r in dkim] + ["example.org", "_dmarc.example.org"]:
        mail.unpublish(name)
    mail.publish(added, only=(*tuple(r["id"] for r in dkim), "dmarc"))
    mail.zone.add("example.org", "TXT", "v=spf1 a:mx.mailgate.test ip4:192.0.2.9 ~all")
    found = status()
    assert {found[r["id"]]["status"] for r in dkim} == {"verified"}
    assert found["spf"]["status"] == "verified" and found["dmarc"]["status"] == "verified"
    assert found["domain"]["sending"] is True and found["domain"]["status"] == "verified"

    # DNS failing: unknown, and the domain stays a sending domain
    for r in dkim:
        mail.zone.servfail.add(r["name"])
    found = status()
    assert {found[r["id"]]["status"] for r in dkim} == {"unknown"}
    assert found["domain"]["sending"] is True

    # gone from DNS: missing, and no longer sending
    for r in dkim:
        mail.zone.servfail.discard(r["name"])
        mail.unpublish(r["name"])
    found = status()
    assert {found[r["id"]]["status"] for r in dkim} == {"missing"}
    assert found["domain"]["sending"] is False

    events = mail.server.call(lambda s: s.events_since(None, 100))[0]
    kinds = [(e.kind.value, e.details) for e in events if e.message_id == ""]
    assert kinds == [
        ("domain_verified", {"domain": "example.org"}),
        ("domain_unverified", {"domain": "example.org"}),
    ]


@pytest.mark.slow
def test_rotation_keeps_the_old_keys_signing_until_the_new_ones_are_verified(mail: Mail) -> None:
    first = mail.add_verified("example.org")
    old = {r["selector"] for r in first["records"] if r["purpose"] == "dkim"}
    rotated = mail.admin("POST", "/v1/domains/example.org/rotate").json()
    new = {r["selector"] for r in rotated["records"] if r["purpose"] == "dkim"} - old
    assert len(new) == 2
    signing = {r["selector"] for r in rotated["records"] if r["signing"]}
    assert signing == old, "the new keys sign only once their records are verified"

    def send_and_check(selectors: set[str]) -> None:
        before = len(mail.script.received)
        sent = mail.http.post(
            "/v1/messages",
            headers={"Authorization": f"Bearer {mail.server.send_key}"},
            json={"from": "a@example.org", "to": [f"x@{INBOX}"], "subject": "s", "text": "t"},
        )
        assert sent.status_code == 202
        data = mail.received(before + 1)[-1].data
        assert_signed(data, mail.dns_port)
        assert {v.selector for v in dkimpy(data, mail.dns_port)} == selectors

    send_and_check(old)
    retire_signing = mail.admin("POST", f"/v1/domains/example.org/keys/{min(old)}/retire")
    assert retire_signing.status_code == 409
    assert retire_signing.json()["error"]["field"] == "selector"
    mail.publish(rotated, only=tuple(f"dkim:{s}" for s in new))
    verified = mail.admin("POST", "/v1/domains/example.org/verify").json()
    assert {r["selector"] for r in verified["records"] if r["signing"]} == new
    send_and_check(new)
    for selector in old:
        retired = mail.admin("POST", f"/v1/domains/example.org/keys/{selector}/retire")
        assert retired.status_code == 200, retired.text
    final = mail.admin("GET", "/v1/domains/example.org").json()
    assert {r["selector"] for r in final["records"] if r["retired"]} == old
    assert final["sending"] is True


@pytest.mark.parametrize("mail", [{"require_verified": True}], indirect=True)
def test_require_verified_refuses_other_from_domains_on_both_doors(mail: Mail) -> None:
    auth = {"Authorization": f"Bearer {mail.server.send_key}"}
    message = {"from": "a@example.org", "to": [f"x@{INBOX}"], "subject": "s", "text": "t"}
    refused = mail.http.post("/v1/messages", headers=auth, json=message)
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["code"] == "domain_not_verified" and error["field"] == "from"
    assert "example.org" in error["message"]
    with smtplib.SMTP("127.0.0.1", mail.server.smtp_port, timeout=30) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as e:
            smtp.sendmail("a@example.org", [f"x@{INBOX}"], b"From: a@example.org\r\n\r\nhi\r\n")
        assert e.value.smtp_code == 550 and b"5.7.1" in e.value.smtp_error
    mail.add_verified("example.org")
    assert mail.http.post("/v1/messages", headers=auth, json=message).status_code == 202
    sub = dict(message, **{"from": "a@mail.example.org"})
    assert mail.http.post("/v1/messages", headers=auth, json=sub).status_code == 202
    assert_signed(mail.received(2)[-1].data, mail.dns_port)


@pytest.mark.parametrize(
    "mail",
    [{"spf_ip": ["192.0.2.10", "2001:db8::/64"], "return_path": "bounces"}],
    indirect=True,
)
def test_spf_and_the_return_path_follow_the_config(mail: Mail) -> None:
    added = mail.admin("POST", "/v1/domains", json={"name": "example.org"}).json()
    by_id = {r["id"]: r for r in added["records"]}
    spf = "v=spf1 ip4:192.0.2.10 ip6:2001:db8::/64 ~all"
    assert by_id["spf"]["value"] == spf
    assert by_id["return_path_mx"]["name"] == "bounces.example.org"
    assert by_id["return_path_mx"]["value"] == "10 mx.mailgate.test"
    assert by_id["return_path_spf"]["value"] == spf
    mail.publish(added, only=("return_path_mx",))
    found = {
        r["id"]: r for r in mail.admin("POST", "/v1/domains/example.org/verify").json()["records"]
    }
    assert found["return_path_mx"]["status"] == "verified"
    assert found["return_path_mx"]["found"] == ["10 mx.mailgate.test"]
    assert found["return_path_spf"]["status"] == "missing"


def test_a_hostile_dns_answer_is_kept_bounded_and_without_control_characters(mail: Mail) -> None:
    added = mail.admin("POST", "/v1/domains", json={"name": "example.org"}).json()
    for i in range(30):  # an apex with many TXT records: the SPF one is still found
        mail.zone.add("example.org", "TXT", f"site-verification={i}")
    mail.zone.add("example.org", "TXT", "v=spf1 a:mx.mailgate.test ~all")
    dkim = next(r for r in added["records"] if r["algorithm"] == "rsa-sha256")
    mail.zone.add(dkim["name"], "TXT", "v=DKIM1; p=\x1b[2J\x07" + "A" * 5000)
    found = {
        r["id"]: r for r in mail.admin("POST", "/v1/domains/example.org/verify").json()["records"]
    }
    assert found["spf"]["status"] == "verified" and len(found["spf"]["found"]) == 10
    assert found["spf"]["found"][0] == "v=spf1 a:mx.mailgate.test ~all", "shown first"
    [hostile] = found[dkim["id"]]["found"]
    assert found[dkim["id"]]["status"] == "mismatched"
    assert "\x1b" not in hostile and "\x07" not in hostile and len(hostile) <= 2049


@pytest.mark.parametrize("mail", [{"require_verified": True}], indirect=True)
def test_a_from_that_parsers_read_apart_borrows_no_domain(mail: Mail) -> None:
    """`From: ceo@bank.example x@example.org` reads as "@example.org" to getaddresses:
    neither require_verified nor a key limited to example.org may take it as that domain."""
    mail.add_verified("example.org")
    raw = b"From: ceo@bank.example x@example.org\r\nTo: x@inbox.test\r\nSubject: s\r\n\r\nb\r\n"
    for key in (mail.server.send_key, mail.server.restricted_key):
        sent = mail.http.post(
            "/v1/messages/raw",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "raw": base64.b64encode(raw).decode(),
                "from": "x@example.org",
                "to": ["x@inbox.test"],
            },
        )
        assert sent.status_code == 403, sent.text
    with smtplib.SMTP("127.0.0.1", mail.server.smtp_port, timeout=30) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as e:
            smtp.sendmail("x@example.org", ["x@inbox.test"], raw)
        assert e.value.smtp_code == 550
