"""DATA: ordering, dot-stuffing, size limit, durable ack, storage failure."""

from __future__ import annotations

import resource
from collections.abc import Awaitable, Callable
from email import message_from_bytes, policy

from mailgate.errors import StoreUnavailable
from mailgate.store import Store
from tests.ingress.conftest import RunningServer, make_config, start_server
from tests.ingress.smtp_relay.dialog import Dialog, greeted


def _transaction(d: Dialog) -> None:
    assert d.cmd("MAIL FROM:<a@example.org>")[0] == 250
    assert d.cmd("RCPT TO:<b@example.com>")[0] == 250
    assert d.cmd("DATA")[0] == 354


def test_data_before_mail_or_rcpt_is_refused(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        assert d.cmd("DATA") == (503, "503 5.5.1 Need MAIL command")
        d.cmd("MAIL FROM:<a@example.org>")
        assert d.cmd("DATA") == (503, "503 5.5.1 Need RCPT command")


def test_dot_stuffing_is_undone_exactly(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        _transaction(d)
        d.send("Subject: dots\r\n\r\n..leading\r\n...two\r\n.\r\n")
        code, text = d.read_reply()
        assert code == 250
    raw = server.call(lambda s: s.get_raw(text.rsplit(" ", 1)[1]))
    assert raw is not None and raw.endswith(b"\r\n\r\n.leading\r\n..two\r\n")


def test_empty_message_is_accepted(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        _transaction(d)
        d.send(".\r\n")
        assert d.read_reply()[0] == 250


def test_oversized_stream_is_refused_with_flat_memory(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    for srv in start_server(make_config(tmp_path, ca, max_message_size=100_000), ca):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with greeted(srv.smtp_port) as d:
            _transaction(d)
            chunk = (b"x" * 998 + b"\r\n") * 1000  # 1 MB per send, 30 MB in all
            for _ in range(30):
                d.send(chunk)
            d.send(b".\r\n")
            assert d.read_reply() == (552, "552 5.3.4 Message size exceeds fixed limit")
            assert d.cmd("NOOP")[0] == 250  # the session goes on
        grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        assert grown_kb < 20_000, grown_kb
        assert sum(srv.call(lambda s: s.status_counts()).values()) == 0


def test_commit_failure_answers_451_never_250(server: RunningServer) -> None:
    with server.failing_enqueue(StoreUnavailable("disk full")), greeted(server.smtp_port) as d:
        _transaction(d)
        d.send("Subject: x\r\n\r\nhi\r\n.\r\n")
        assert d.read_reply() == (451, "451 4.3.0 Temporary storage failure, try again later")


def test_same_message_id_from_same_key_is_queued_once(server: RunningServer) -> None:
    ids = []
    for _ in range(2):
        with greeted(server.smtp_port) as d:
            _transaction(d)
            d.send("Message-ID: <once@example.org>\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
            code, text = d.read_reply()
            assert code == 250
            ids.append(text.rsplit(" ", 1)[1])
    assert ids[0] == ids[1]
    assert sum(server.call(lambda s: s.status_counts()).values()) == 1


def _raw_of(queue_id: str) -> Callable[[Store], Awaitable[bytes | None]]:
    return lambda s: s.get_raw(queue_id)


def test_blank_message_id_is_replaced_by_a_fresh_one(server: RunningServer) -> None:
    for blank in ("Message-ID:", "Message-ID:   ", "Message-Id:\r\n \t"):
        with greeted(server.smtp_port) as d:
            _transaction(d)
            d.send(f"From: a@example.org\r\n{blank}\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
            code, text = d.read_reply()
            assert code == 250
        raw = server.call(_raw_of(text.rsplit(" ", 1)[1]))
        assert raw is not None
        head = message_from_bytes(raw, policy=policy.default)
        ids = head.get_all("Message-ID")
        assert ids is not None and len(ids) == 1 and ids[0].strip().startswith("<"), raw
        assert raw.endswith(b"From: a@example.org\r\nSubject: x\r\n\r\nhi\r\n")
