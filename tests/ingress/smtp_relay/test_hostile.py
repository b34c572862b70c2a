"""Hostile input, table-driven: each case gets its reply, the server stays up, and no
smuggled or half message is ever stored."""

from __future__ import annotations

import base64
import socket
from dataclasses import dataclass

import pytest

from mailgate.models import MessageQuery
from tests.ingress.conftest import RunningServer
from tests.ingress.smtp_relay.dialog import Dialog, greeted

TXN = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
SMUGGLED = b"MAIL FROM:<evil@evil.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled\r\n"


@dataclass(frozen=True)
class Case:
    name: str
    script: list[bytes]  # sent one after another, each followed by reading one reply
    expect: list[int]  # the code of each reply, in order
    stored: int = 0  # messages that may be stored afterwards


def smuggle(end: bytes) -> Case:
    """A message whose body hides a fake end-of-data and a second transaction."""
    body = b"Subject: x\r\n\r\nhello" + end + SMUGGLED + b"\r\n.\r\n"
    return Case(
        f"smuggle {end!r}",
        [b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.com>\r\n", b"DATA\r\n", body],
        [250, 250, 354, 550],
    )


def plain(script: list[bytes], expect: list[int], name: str, stored: int = 0) -> Case:
    return Case(name, script, expect, stored)


CASES = [
    smuggle(b"\n.\n"),
    smuggle(b"\n.\r\n"),
    smuggle(b"\r.\r\n"),
    smuggle(b"\r\n.\n"),
    smuggle(b"\r\n\x00.\r\n"),
    smuggle(b"\r.\r"),
    smuggle(b"\n.\r"),
    smuggle(b"\r\n.\r"),
    smuggle(b"\r\n.\x00\r\n"),
    smuggle(b"\n\n.\n\n"),
    plain(
        [
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<b@example.com>\r\n",
            b"DATA\r\n",
            b"Subject: x\r\n\r\n" + b"y" * 1200 + b"\r\n.\r\n",
        ],
        [250, 250, 354, 550],
        "data line over 998 octets",
    ),
    plain([b"NOOP " + b"x" * 3000 + b"\r\n"], [500], "overlong command line"),
    plain([b"NOOP " + b"x" * (1 << 20) + b"\r\n"], [500], "1 MB command line"),
    plain([b"MAIL FROM:<a@example.org> SIZE=999999999999\r\n"], [552], "oversized SIZE"),
    plain([b"AUTH PLAIN ***\r\n"], [501], "bad base64 in AUTH"),
    plain([b"DATA\r\n"], [503], "DATA before MAIL"),
    plain([b"MAIL FROM:<a@example.org>\r\n", b"DATA\r\n"], [250, 503], "DATA before RCPT"),
    plain(
        [b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<u%other.test@example.com>\r\n"],
        [250, 553],
        "percent hack",
    ),
    plain(
        [b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<@hop.test:u@example.com>\r\n"],
        [250, 553],
        "source route",
    ),
    plain(
        [b"MAIL FROM:<a@example.org>\r\n", b'RCPT TO:<"u@other.test"@example.com>\r\n'],
        [250, 553],
        "quoted local part with @",
    ),
    plain(
        [b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<a@b@example.com>\r\n"], [250, 553], "two @"
    ),
    plain([b"NO\x00OP\r\n"], [500], "NUL in a command"),
    plain([b"\xff\xfe\r\n"], [500], "invalid UTF-8 command"),
    plain([b"XYZZY\r\n"], [500], "unknown command"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_input(server: RunningServer, case: Case) -> None:
    with greeted(server.smtp_port) as d:
        got = []
        for chunk in case.script:
            d.send(chunk)
            got.append(d.read_reply()[0])
        assert got == case.expect
        assert d.cmd("NOOP")[0] == 250  # the session is still usable
    assert sum(server.call(lambda s: s.status_counts()).values()) == case.stored
    assert_server_up(server)


def assert_server_up(server: RunningServer) -> None:
    """Another client still gets a whole transaction through."""
    with greeted(server.smtp_port) as d:
        d.send(TXN)
        assert [d.read_reply()[0] for _ in range(3)] == [250, 250, 354]
        d.send(b"Subject: ok\r\n\r\nfine\r\n.\r\n")
        assert d.read_reply()[0] == 250


def test_smuggled_transaction_never_stored(server: RunningServer) -> None:
    for case in CASES[:10]:
        with greeted(server.smtp_port) as d:
            for chunk in case.script:
                d.send(chunk)
                d.read_reply()
    for address in ("victim@example.com", "b@example.com"):
        found = server.call(lambda s, a=address: s.list_messages(MessageQuery(recipient=a)))
        assert found == []


def test_pipelining_before_the_greeting_is_refused(server: RunningServer) -> None:
    sock = socket.create_connection(("127.0.0.1", server.smtp_port), 10)
    sock.sendall(b"EHLO early.test\r\n" + TXN + b"Subject: x\r\n\r\nhi\r\n.\r\n")
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert b"\r\n554 Improper command pipelining\r\n" in data, data
    assert b"queued" not in data
    assert sum(server.call(lambda s: s.status_counts()).values()) == 0


def test_auth_twice(server: RunningServer) -> None:
    token = base64.b64encode(f"\0u\0{server.send_key}".encode()).decode()
    with greeted(server.smtp_port) as d:
        assert d.cmd(f"AUTH PLAIN {token}")[0] == 235
        assert d.cmd(f"AUTH PLAIN {token}")[0] == 503


def test_too_many_unknown_commands_closes(server: RunningServer) -> None:
    with Dialog(server.smtp_port) as d:
        d.read_reply()
        codes = [d.cmd("BOGUS")[0] for _ in range(11)]
        assert codes == [500] * 10 + [421]
        assert d.closed()
