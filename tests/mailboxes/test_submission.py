"""The pure edges of sending from a mailbox and of the Nylas surface: which addresses a
grant's server may be at, the route a grant's mail takes, Nylas' query values."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest
from starlette.datastructures import QueryParams

from mailgate.config import DeliveryConfig, MailboxesConfig
from mailgate.http.errors import ApiError
from mailgate.http.nylas.shapes import flag, texts
from mailgate.mailboxes import submission
from mailgate.mailboxes.models import AuthMethod, Credentials, Server, TlsMode
from mailgate.mailboxes.submission import addresses
from mailgate.models import GRANT_ROUTE, grant_of_route
from tests.mailboxes.dovecot import Dovecot
from tests.mailboxes.submission_peer import start_submission
from tests.store.test_grants import a_grant


async def test_a_grant_server_on_a_private_network_needs_the_setting() -> None:
    refused = await addresses("127.0.0.1", 587, [])
    assert isinstance(refused, str) and "mailboxes.allow_private_networks" in refused
    allowed = await addresses("127.0.0.1", 587, [ipaddress.ip_network("127.0.0.0/8")])
    assert allowed == ["127.0.0.1"]
    unknown = await addresses("no-such-host.invalid", 587, [])
    assert isinstance(unknown, str) and "cannot be resolved" in unknown


def test_a_grant_route_names_its_grant_and_nothing_else_does() -> None:
    route = GRANT_ROUTE.format("01ABC")
    assert grant_of_route(route) == "01ABC"
    assert grant_of_route("example.com") is None
    assert grant_of_route("(sandbox)") is None


def test_nylas_query_values() -> None:
    q = QueryParams("unread=True&starred=false&any_email=a%40x.com&any_email=b%40x.com,c%40x.com")
    assert flag(q, "unread") is True and flag(q, "starred") is False
    assert flag(q, "has_attachment") is None
    assert texts(q, "any_email") == ["a@x.com", "b@x.com", "c@x.com"]
    with pytest.raises(ApiError) as err:
        flag(QueryParams("unread=maybe"), "unread")
    assert err.value.field == "unread"


async def test_the_smtp_check_logs_in_with_a_password_or_an_oauth2_token(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    peer, controller = start_submission(dovecot, tmp_path)
    try:
        ca = tmp_path / "ca.pem"
        dovecot.ca.cert_pem.write_to_path(str(ca))
        cfg = MailboxesConfig(allow_private_networks=["127.0.0.0/8"], tls_ca_file=str(ca))
        user = dovecot.take_user()
        peer.tokens[user] = "ya29.token"
        grant = replace(
            a_grant("k1", user),
            username=user,
            smtp=Server("127.0.0.1", peer.port, TlsMode.STARTTLS),
        )

        async def check(creds: Credentials) -> str | None:
            return await submission.check(grant, creds, DeliveryConfig(), cfg, "client.test")

        assert await check(Credentials(AuthMethod.PASSWORD, dovecot.users[user])) is None
        assert await check(Credentials(AuthMethod.XOAUTH2, "ya29.token")) is None
        refused = await check(Credentials(AuthMethod.XOAUTH2, "expired"))
        assert refused is not None and "refused the mailbox's credentials" in refused
        assert "expired" not in refused
        unverified = await submission.check(
            grant,
            Credentials(AuthMethod.PASSWORD, dovecot.users[user]),
            DeliveryConfig(),
            MailboxesConfig(allow_private_networks=["127.0.0.0/8"]),  # not our CA
            "client.test",
        )
        assert unverified is not None and "TLS" in unverified
    finally:
        controller.stop()
