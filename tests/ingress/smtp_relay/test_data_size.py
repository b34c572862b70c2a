"""DATA streams with memory bounded by max_message_size: at the limit 250, one byte over
552 5.3.4 with the session still in step, and big mail under the limit stored intact
(issue 11, finding 3)."""

from __future__ import annotations

from pathlib import Path

import trustme

from tests.ingress.conftest import RunningServer, make_config, start_server
from tests.ingress.smtp_relay.dialog import Dialog, greeted

LIMIT = 1024


def _message(size: int, line: bytes = b"x" * 98) -> bytes:
    """A message of exactly `size` bytes (unstuffed) made of 100-byte lines."""
    head = b"Subject: size\r\n\r\n"
    body = (line + b"\r\n") * ((size - len(head) - 2) // 100)
    pad = size - len(head) - len(body)
    assert pad >= 2
    return head + body + b"p" * (pad - 2) + b"\r\n"


def _stuff(message: bytes) -> bytes:
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    return (b"." + stuffed if stuffed.startswith(b".") else stuffed) + b".\r\n"


def _data(d: Dialog, message: bytes, *, chunks: int = 1) -> tuple[int, str]:
    assert d.cmd("MAIL FROM:<a@example.org>")[0] == 250
    assert d.cmd("RCPT TO:<b@example.com>")[0] == 250
    assert d.cmd("DATA")[0] == 354
    wire = _stuff(message)
    step = -(-len(wire) // chunks)
    for i in range(0, len(wire), step):
        d.send(wire[i : i + step])
    return d.read_reply()


def _stored_raw(srv: RunningServer, text: str) -> bytes:
    raw = srv.call(lambda s: s.get_raw(text.rsplit(" ", 1)[1]))
    assert raw is not None
    return raw


def test_at_the_limit_250_one_byte_over_552(tmp_path: Path, ca: trustme.CA) -> None:
    for srv in start_server(make_config(tmp_path, ca, max_message_size=LIMIT), ca):
        with greeted(srv.smtp_port) as d:
            for chunks in (1, 7):  # the whole message in one read, and in pieces
                exact = _message(LIMIT)
                code, text = _data(d, exact, chunks=chunks)
                assert code == 250, text
                assert _stored_raw(srv, text).endswith(b"\r\n" + exact)
                code, text = _data(d, _message(LIMIT + 1), chunks=chunks)
                assert (code, text) == (552, "552 5.3.4 Message size exceeds fixed limit")
                assert d.cmd("NOOP")[0] == 250  # still in step
        assert sum(srv.call(lambda s: s.status_counts()).values()) == 2


def test_limit_counts_unstuffed_bytes(tmp_path: Path, ca: trustme.CA) -> None:
    for srv in start_server(make_config(tmp_path, ca, max_message_size=LIMIT), ca):
        with greeted(srv.smtp_port) as d:
            dotted = _message(LIMIT, line=b"." + b"y" * 97)  # every line dot-stuffed
            code, text = _data(d, dotted, chunks=3)
            assert code == 250, text
            assert _stored_raw(srv, text).endswith(b"\r\n" + dotted)


def test_twenty_megabytes_is_received_and_stored_intact(server: RunningServer) -> None:
    big = _message(20_000_000, line=b"z" * 60 + b".abc" + b"w" * 34)
    with greeted(server.smtp_port) as d:
        d.sock.settimeout(120)
        code, text = _data(d, big)
        assert code == 250, text
    assert _stored_raw(server, text).endswith(b"\r\n" + big)
