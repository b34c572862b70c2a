"""Security batteries: no open relay, brute force slowed and locked out on both doors, keys
never stored or logged in the clear.

Postfix (smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated,
reject_unauth_destination) refuses every relay trick below; Dovecot and Postfix's anvil
slow and lock out password guessing; no trusted MTA writes credentials to its logs.
"""

from __future__ import annotations

import base64
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests.ingress.conftest import FIRST_FAILURE_DELAY, RunningServer, make_config, start_server
from tests.ingress.smtp_relay.dialog import greeted
from tests.reliability.harness import running

UNTRUSTED = ["192.0.2.0/24"]  # loopback is outside the trusted networks in these tests

RELAY_TRICKS = [
    "victim@external.test",
    "VICTIM@EXTERNAL.TEST",
    "victim@external.test.",
    "victim@[192.0.2.99]",
    "victim%external.test@mx.mailgate.test",
    "victim%external.test@[127.0.0.1]",
    "@mx.mailgate.test:victim@external.test",
    "@mx.mailgate.test,@other.test:victim@external.test",
    '"victim@external.test"@mx.mailgate.test',
    "victim@external.test@mx.mailgate.test",
    "external.test!victim@mx.mailgate.test",
    "external.test!victim",
    "victim",
    "postmaster@external.test",
    "victim@localhost",
    "victïm@éxternal.test",
]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def untrusted(tmp_path: Path, ca: trustme.CA) -> Iterator[RunningServer]:
    yield from start_server(make_config(tmp_path, ca, trusted_networks=UNTRUSTED), ca)


@pytest.mark.parametrize("sender", ["a@example.org", "postmaster@mx.mailgate.test", ""])
def test_open_relay_battery_from_outside_the_trusted_networks(
    untrusted: RunningServer, sender: str
) -> None:
    with greeted(untrusted.smtp_port, "EHLO mx.mailgate.test") as d:
        for rcpt in RELAY_TRICKS:
            assert d.cmd(f"MAIL FROM:<{sender}> SMTPUTF8")[0] == 250
            code, text = d.cmd(f"RCPT TO:<{rcpt}>")
            assert 500 <= code < 600, (rcpt, text)
            assert d.cmd("RSET")[0] == 250
        # a failed AUTH does not open the door either
        assert d.cmd(f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + 'guess')}")[0] == 535
        assert d.cmd(f"MAIL FROM:<{sender}>")[0] == 250
        assert d.cmd("RCPT TO:<victim@external.test>")[0] == 554
        # DATA without an accepted recipient stores nothing
        assert d.cmd("DATA")[0] == 503
    assert sum(untrusted.call(lambda s: s.status_counts()).values()) == 0


def test_pipelined_relay_attempt_stores_nothing(untrusted: RunningServer) -> None:
    with greeted(untrusted.smtp_port) as d:
        d.send(
            "MAIL FROM:<a@example.org>\r\nRCPT TO:<victim@external.test>\r\nDATA\r\n"
            "Subject: spam\r\n\r\nbuy now\r\n.\r\n"
        )
        replies = [d.read_reply()[0] for _ in range(3)]
        assert replies[:3] == [250, 554, 503]
    assert sum(untrusted.call(lambda s: s.status_counts()).values()) == 0


def test_key_locked_after_failures_on_either_door(tmp_path: Path, ca: trustme.CA) -> None:
    cfg = make_config(
        tmp_path, ca, auth={"failures_per_key": 3, "failures_per_ip": 100}, max_auth_failures=10
    )
    for srv in start_server(cfg, ca):
        wrong = srv.send_key[:-4] + ("AAAA" if not srv.send_key.endswith("AAAA") else "BBBB")
        url = f"{srv.http_url}/v1/messages?limit=1"
        unknown = httpx.get(url, headers={"Authorization": "Bearer mg_x"}, timeout=10)
        for _ in range(3):  # guessing this key's secret over HTTP...
            r = httpx.get(url, headers={"Authorization": f"Bearer {wrong}"}, timeout=10)
            assert r.status_code == 401
            assert r.json() == unknown.json(), "wrong and unknown keys must look the same"
        # ...locks it on both doors, and the locked key is answered like a wrong one
        with greeted(srv.smtp_port) as d:
            assert d.cmd(f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + srv.send_key)}") == (
                535,
                "535 5.7.8 Authentication credentials invalid",
            )
        r = httpx.get(url, headers={"Authorization": f"Bearer {srv.read_key}"}, timeout=10)
        assert r.status_code == 200, "other keys are not affected"


def test_http_key_lock_holds_only_for_the_addresses_that_failed(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """Knowing a key's visible id must not let anyone lock its owner out."""
    cfg = make_config(tmp_path, ca, auth={"failures_per_key": 3, "failures_per_ip": 100})
    for srv in start_server(cfg, ca):
        wrong = srv.read_key[:-4] + ("AAAA" if not srv.read_key.endswith("AAAA") else "BBBB")
        url = f"{srv.http_url}/v1/messages?limit=1"
        for _ in range(3):  # the attacker, from 127.0.0.1
            r = httpx.get(url, headers={"Authorization": f"Bearer {wrong}"}, timeout=10)
            assert r.status_code == 401
        mine = {"Authorization": f"Bearer {srv.read_key}"}
        assert httpx.get(url, headers=mine, timeout=10).status_code == 401, "locked for it"
        owner = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with owner:
            assert owner.get(url, headers=mine, timeout=10).status_code == 200, (
                "the owner, from an address that never failed, still gets in"
            )


def test_http_failures_slow_down_then_lock_the_address(tmp_path: Path, ca: trustme.CA) -> None:
    cfg = make_config(tmp_path, ca, auth={"failures_per_ip": 4})
    for srv in start_server(cfg, ca):
        url = f"{srv.http_url}/v1/messages?limit=1"
        took = []
        for i in range(4):
            started = time.monotonic()
            r = httpx.get(url, headers={"Authorization": f"Bearer mg_guess{i}"}, timeout=10)
            took.append(time.monotonic() - started)
            assert r.status_code == 401
        # lower bounds only: a loaded machine can make any request slower, never faster
        assert all(t >= 0.95 * FIRST_FAILURE_DELAY * 2**i for i, t in enumerate(took)), took
        r = httpx.get(url, headers={"Authorization": f"Bearer {srv.read_key}"}, timeout=10)
        assert r.status_code == 429, "even the right key from a locked-out address"
        assert int(r.headers["retry-after"]) > 0
        assert r.json()["error"]["code"] == "too_many_auth_failures"


def test_secrets_are_stored_hashed_and_never_logged(tmp_path: Path) -> None:
    with running(tmp_path) as (server, _, key):
        assert server.terminate() == 0
        server.config.write_text(
            server.config.read_text().replace("[server]\n", '[server]\nlog_level = "debug"\n', 1)
        )
        server.start()
        wrong = key[:-6] + "ZZZZZZ"
        for secret in (key, wrong):
            httpx.get(
                f"http://127.0.0.1:{server.http_port}/v1/messages",
                headers={"Authorization": f"Bearer {secret}"},
                timeout=10,
            )
            with greeted(server.smtp_port) as d:
                d.cmd(f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + secret)}")
        httpx.post(
            f"http://127.0.0.1:{server.http_port}/v1/messages",
            json={"from": "a@chaos.test", "to": ["b@dest.test"], "subject": "s", "text": "t"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert server.terminate() == 0
    logs = server.logs()
    assert "auth: failed authentication from 127.0.0.1" in logs, "failures are logged"
    # mg_<key id>_<secret>: the secret itself may hold "_" (url-safe base64), so split
    # after the id; rsplit once took a one-letter tail and found it in the key id
    token = key.split("_", 2)[2]
    for secret in (key, wrong, token, wrong.split("_", 2)[2]):
        assert secret not in logs
    conn = sqlite3.connect(server.db)
    dump = "\n".join(conn.iterdump())
    conn.close()
    assert token not in dump and key not in dump, "the store holds the secret in the clear"
