"""The official `nylas` SDK, unmodified (`Client(api_key=..., api_uri=...)`), against a
running mailgate (HTTP, delivery, the mailboxes) with a real Dovecot for the mailboxes
and a real submission server (aiosmtpd: STARTTLS, then AUTH) that delivers into the
Dovecot: a grant made, read, sent from, replied in thread, drafted and scheduled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path
from typing import Any, TypeVar

import pytest
from nylas import Client
from nylas.models.errors import NylasApiError

from mailgate import keys
from mailgate.config import Config
from mailgate.mailboxes.models import Grant
from mailgate.models import Scope
from tests.ingress.conftest import RunningServer, make_config, start_server
from tests.mailboxes.dovecot import Dovecot, message
from tests.mailboxes.submission_peer import SubmissionPeer, start_submission

T = TypeVar("T")


@dataclass
class Env:
    server: RunningServer
    dovecot: Dovecot
    peer: SubmissionPeer
    admin_key: str

    @property
    def url(self) -> str:
        return self.server.http_url

    def client(self, key: str | None = None) -> Client:
        return Client(api_key=key or self.server.send_key, api_uri=self.url)

    def settings(self, user: str, password: str | None = None) -> dict[str, Any]:
        return {
            "email": user,
            "imap_username": user,
            "imap_password": password or self.dovecot.users[user],
            "imap_host": "127.0.0.1",
            "imap_port": self.dovecot.imaps_port,
            "imap_security": "ssl",
            "smtp_host": "127.0.0.1",
            "smtp_port": self.peer.port,
            "smtp_security": "starttls",
        }

    def connect(self, user: str, key: str | None = None) -> str:
        grant = self.client(key).auth.custom_authentication(
            {"provider": "imap", "settings": self.settings(user)}
        )
        return str(grant.data.id)

    def sync(self, grant_id: str) -> None:
        """One sync pass now, in the server's loop (the background sync may be slower)."""
        mailboxes = self.server.app.http.api.mailboxes if self.server.app.http else None
        assert mailboxes is not None

        async def run() -> None:
            store = self.server.app.store
            assert store is not None
            grant = await store.get_grant(grant_id)
            assert isinstance(grant, Grant)
            await mailboxes.sync_now(grant)  # type: ignore[attr-defined]

        asyncio.run_coroutine_threadsafe(run(), self.server.loop).result(30)


def eventually(fn: Callable[[], T | None], timeout: float = 20) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def config_for(tmp: Path, dovecot: Dovecot) -> Config:
    ca_file = tmp / "test-ca.pem"
    dovecot.ca.cert_pem.write_to_path(str(ca_file))
    base = make_config(tmp, dovecot.ca)
    data = base.model_dump()
    for section in ("smtp", "http"):  # the deprecated spellings of accept.max_recipients
        del data[section]["max_recipients"]
    data["server"]["delivery_process"] = False
    data["delivery"] = {"enabled": True, "retry_first": 1}
    data["mailboxes"] = {
        **data.get("mailboxes", {}),
        "allow_private_networks": ["127.0.0.0/8"],
        "tls_ca_file": str(ca_file),
    }
    return type(base).model_validate(data)


@pytest.fixture(scope="module")
def env(dovecot: Dovecot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("nylas")
    peer, controller = start_submission(dovecot, tmp)
    try:
        for server in start_server(config_for(tmp, dovecot), dovecot.ca):
            _, admin = server.call(lambda s: keys.create_key(s, "admin", [Scope.ADMIN, Scope.SEND]))
            yield Env(server, dovecot, peer, admin)
    finally:
        controller.stop()


# -- grants ---------------------------------------------------------------------------------


def test_a_grant_is_made_read_listed_and_never_shows_its_password(env: Env) -> None:
    user = env.dovecot.take_user()
    nylas = env.client()
    made = nylas.auth.custom_authentication({"provider": "imap", "settings": env.settings(user)})
    grant = made.data
    assert grant.email == user and grant.grant_status == "valid" and made.request_id
    assert grant.settings is not None
    assert not {"password", "imap_password", "access_token"} & set(grant.settings)
    assert env.dovecot.users[user] not in str(grant.settings)

    assert nylas.grants.find(grant.id).data.email == user
    assert grant.id in [g.id for g in nylas.grants.list().data]
    # an admin sees every grant; another key sees none of this key's
    assert grant.id in [g.id for g in env.client(env.admin_key).grants.list().data]
    other = env.client(env.server.restricted_key)
    assert grant.id not in [g.id for g in other.grants.list().data]
    with pytest.raises(NylasApiError) as err:
        other.grants.find(grant.id)
    assert err.value.status_code == 404
    with pytest.raises(NylasApiError):
        other.messages.list(grant.id)

    # re-authenticate: new credentials are checked before they are kept
    with pytest.raises(NylasApiError) as bad:
        nylas.grants.update(grant.id, {"settings": {"imap_password": "wrong"}})
    assert bad.value.status_code == 401
    again = nylas.grants.update(grant.id, {"settings": {"password": env.dovecot.users[user]}})
    assert again.data.grant_status == "valid"

    nylas.grants.destroy(grant.id)
    with pytest.raises(NylasApiError) as gone:
        nylas.grants.find(grant.id)
    assert gone.value.status_code == 404


def test_bad_credentials_are_refused_on_create_with_the_cause(env: Env) -> None:
    user = env.dovecot.take_user()
    with pytest.raises(NylasApiError) as err:
        env.client().auth.custom_authentication(
            {"provider": "imap", "settings": env.settings(user, password="not-it")}
        )
    assert err.value.status_code == 401
    assert err.value.type == "unauthorized"
    assert "not-it" not in str(err.value)
    assert err.value.request_id

    settings = {**env.settings(user), "smtp_port": 1}  # nothing listens there
    with pytest.raises(NylasApiError) as down:
        env.client().auth.custom_authentication({"provider": "imap", "settings": settings})
    assert down.value.status_code == 502 and "127.0.0.1:1" in str(down.value)

    tls = {**env.settings(user), "smtp_security": "ssl"}  # TLS at once: the server waits
    with pytest.raises(NylasApiError) as handshake:
        env.client().auth.custom_authentication({"provider": "imap", "settings": tls})
    assert handshake.value.status_code == 502
    assert "TLS" in str(handshake.value) and f":{env.peer.port}" in str(handshake.value)

    with pytest.raises(NylasApiError) as typo:
        env.client().auth.custom_authentication(
            {"provider": "imap", "settings": {**env.settings(user), "imap_prot": 1}}
        )
    assert typo.value.status_code == 400 and "imap_prot" in str(typo.value)


# -- reading, sending, replying in thread -----------------------------------------------------


def test_a_reply_reaches_the_other_party_in_thread_and_is_filed_in_sent(env: Env) -> None:
    alice, bob = env.dovecot.take_user(), env.dovecot.take_user()
    original_id = f"<hello.{time.monotonic_ns()}@example.net>"
    env.dovecot.append(
        alice,
        message(
            "Lunch?",
            message_id=original_id,
            sender=bob,
            to=alice,
            references="<older@example.net>",
        ),
    )
    grant_id = env.connect(alice)
    env.sync(grant_id)
    nylas = env.client()

    folders = nylas.folders.list(grant_id).data
    assert {"INBOX", "Sent", "Drafts"} <= {f.name for f in folders}
    inbox = nylas.messages.list(grant_id, query_params={"in": "INBOX", "limit": 10}).data
    [lunch] = [m for m in inbox if m.subject == "Lunch?"]
    assert lunch.from_[0]["email"] == bob and lunch.unread is True
    unread_only = nylas.messages.list(grant_id, query_params={"unread": True}).data
    assert lunch.id in [m.id for m in unread_only]
    threads = nylas.threads.list(grant_id).data
    assert lunch.thread_id in [t.id for t in threads]

    sent = nylas.messages.send(
        grant_id,
        {
            "to": [{"email": bob, "name": "Bob"}],
            "body": "<p>Yes, at noon.</p>",
            "reply_to_message_id": lunch.id,
        },
    )
    assert sent.data.grant_id == grant_id and sent.data.subject == "Re: Lunch?"

    # the other party receives it, threaded under the original
    received = eventually(
        lambda: [r for r in env.peer.received if bob in r.recipients and b"Re: Lunch?" in r.data]
    )
    got = message_from_bytes(received[0].data)
    assert received[0].login == alice  # sent with the grant's own credentials
    assert got["From"].endswith(f"<{alice}>") or got["From"] == alice
    assert got["In-Reply-To"] == original_id
    assert got["References"].split() == ["<older@example.net>", original_id]

    # filed in Alice's Sent, and in the same thread as what it answers
    def in_sent() -> list[Any]:
        env.sync(grant_id)
        found = nylas.messages.list(grant_id, query_params={"in": "sent"}).data
        return [m for m in found if m.subject == "Re: Lunch?"]

    [filed] = eventually(in_sent)
    assert filed.thread_id == lunch.thread_id
    thread = nylas.threads.find(grant_id, lunch.thread_id).data
    assert {lunch.id, filed.id} <= set(thread.message_ids)

    # flags change through the API
    read = nylas.messages.update(grant_id, lunch.id, {"unread": False, "starred": True}).data
    assert read.unread is False and read.starred is True
    with pytest.raises(NylasApiError) as missing:
        nylas.messages.find(grant_id, "no-such-message")
    assert missing.value.status_code == 404 and missing.value.type == "not_found_error"


def test_drafts_are_kept_in_the_mailbox_and_sent_from_it(env: Env) -> None:
    alice, bob = env.dovecot.take_user(), env.dovecot.take_user()
    grant_id = env.connect(alice)
    env.sync(grant_id)
    nylas = env.client()

    draft = nylas.drafts.create(
        grant_id, {"to": [{"email": bob}], "subject": "Draft one", "body": "first words"}
    ).data
    assert draft.subject == "Draft one"
    assert draft.id in [d.id for d in nylas.drafts.list(grant_id).data]
    changed = nylas.drafts.update(grant_id, draft.id, {"subject": "Draft two"}).data
    assert changed.subject == "Draft two" and changed.to[0]["email"] == bob

    sent = nylas.drafts.send(grant_id, changed.id)
    assert sent.data.grant_id == grant_id
    eventually(lambda: [r for r in env.peer.received if b"Draft two" in r.data])
    assert changed.id not in [d.id for d in nylas.drafts.list(grant_id).data]


def test_a_scheduled_send_is_listed_and_cancelled(env: Env) -> None:
    alice = env.dovecot.take_user()
    grant_id = env.connect(alice)
    nylas = env.client()
    later = int(time.time()) + 3600
    sent = nylas.messages.send(
        grant_id, {"to": [{"email": "carol@example.net"}], "subject": "Later", "send_at": later}
    ).data
    assert sent.send_at == later and sent.schedule_id
    listed = nylas.messages.list_scheduled_messages(grant_id).data
    assert [s.schedule_id for s in listed] == [sent.schedule_id]
    assert listed[0].status.code == "pending"

    stopped = nylas.messages.stop_scheduled_message(grant_id, sent.schedule_id).data
    assert "cancelled" in stopped.message
    assert nylas.messages.find_scheduled_message(grant_id, sent.schedule_id).data.status.code == (
        "cancelled"
    )
    # a repeated stop is answered alike; another grant's schedule is not found
    assert nylas.messages.stop_scheduled_message(grant_id, sent.schedule_id).data.message
    other = env.connect(env.dovecot.take_user())
    with pytest.raises(NylasApiError) as elsewhere:
        nylas.messages.find_scheduled_message(other, sent.schedule_id)
    assert elsewhere.value.status_code == 404


def test_a_send_names_the_field_at_fault(env: Env) -> None:
    alice = env.dovecot.take_user()
    grant_id = env.connect(alice)
    with pytest.raises(NylasApiError) as err:
        env.client().messages.send(grant_id, {"to": [{"email": "not an address"}], "body": "x"})
    assert err.value.status_code == 400 and "to[0]" in str(err.value)
    with pytest.raises(NylasApiError) as spoof:
        env.client().messages.send(
            grant_id,
            {"from": [{"email": "ceo@example.com"}], "to": [{"email": "a@example.net"}]},
        )
    assert spoof.value.status_code == 400 and alice in str(spoof.value)


def test_credentials_refused_at_delivery_defer_the_mail_and_invalidate_the_grant(
    env: Env,
) -> None:
    alice = env.dovecot.take_user()
    grant_id = env.connect(alice)
    env.peer.locked.add(alice)  # the password changed on the server since the grant
    try:
        sent = (
            env.client()
            .messages.send(grant_id, {"to": [{"email": "dan@example.net"}], "subject": "Refused"})
            .data
        )
        status = eventually(
            lambda: (g := env.client().grants.find(grant_id).data).grant_status == "invalid" and g
        )
        assert status.grant_status == "invalid"

        def deferred() -> list[Any]:
            found = env.server.call(lambda store: store.recipients(sent.id))
            return [r for r in found if r.status.value == "deferred"]

        [recipient] = eventually(deferred)
        assert recipient.last_reply is not None
        assert "refused the mailbox's credentials" in recipient.last_reply.text
        assert recipient.domain == f"(grant:{grant_id})"
        assert not [r for r in env.peer.received if b"Refused" in r.data]
    finally:
        env.peer.locked.discard(alice)


def test_an_attachment_is_described_and_downloaded(env: Env) -> None:
    alice = env.dovecot.take_user()
    raw = (
        b"From: bob@example.net\r\nTo: " + alice.encode() + b"\r\nSubject: Report\r\n"
        b"Message-ID: <report.1@example.net>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
        b"--b\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="q3.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n"
    )
    env.dovecot.append(alice, raw)
    grant_id = env.connect(alice)
    env.sync(grant_id)
    nylas = env.client()
    [report] = nylas.messages.list(grant_id, query_params={"has_attachment": True}).data
    full = nylas.messages.find(grant_id, report.id).data
    assert full.body and "See attached." in full.body
    [attached] = full.attachments
    assert attached.filename == "q3.pdf" and attached.content_type == "application/pdf"
    found = nylas.attachments.find(grant_id, attached.id, {"message_id": report.id}).data
    assert found.size == len(b"%PDF-1.4\n")
    data = nylas.attachments.download_bytes(grant_id, attached.id, {"message_id": report.id})
    assert data == b"%PDF-1.4\n"
