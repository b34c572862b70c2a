"""Re-sends: only a true re-send of one whole transaction is folded into the first copy.

A 250 must never stand for recipients that were not stored (issue 11, finding 2)."""

from __future__ import annotations

from pathlib import Path

import trustme

from tests.ingress.conftest import RunningServer, make_config, start_server
from tests.ingress.smtp_relay.dialog import Dialog, greeted

MESSAGE = b"Message-ID: <one@example.org>\r\nSubject: x\r\n\r\nhi\r\n.\r\n"


def _send(d: Dialog, sender: str, rcpts: list[str], data: bytes = MESSAGE) -> tuple[str, int]:
    """One transaction; (queue id, how many RCPTs got 250)."""
    assert d.cmd(f"MAIL FROM:<{sender}>")[0] == 250
    taken = sum(d.cmd(f"RCPT TO:<{r}>")[0] == 250 for r in rcpts)
    assert d.cmd("DATA")[0] == 354
    d.send(data)
    code, text = d.read_reply()
    assert code == 250, text
    return text.rsplit(" ", 1)[1], taken


def _stored(server: RunningServer, qid: str) -> list[str]:
    return [r.address for r in server.call(lambda s: s.recipients(qid))]


def test_recipients_refused_by_our_452_and_resent_are_all_stored(
    tmp_path: Path, ca: trustme.CA
) -> None:
    everyone = [f"r{i}@example.com" for i in range(101)]
    for server in start_server(make_config(tmp_path, ca, max_recipients=100), ca):
        with greeted(server.smtp_port) as d:
            first, taken = _send(d, "a@example.org", everyone)
            assert taken == 100  # the 101st got 452 4.5.3 Too many recipients
            # RFC 5321 4.5.3.1.10: the client sends the same message to the rest
            second, _ = _send(d, "a@example.org", everyone[taken:])
        assert second != first
        stored = _stored(server, first) + _stored(server, second)
        assert sorted(stored) == sorted(everyone)


def test_per_recipient_copies_with_one_message_id_are_all_stored(server: RunningServer) -> None:
    with greeted(server.smtp_port) as d:
        one, _ = _send(d, "a@example.org", ["x@example.com"])
    with greeted(server.smtp_port) as d:
        two, _ = _send(d, "a@example.org", ["y@example.com"])
        three, _ = _send(d, "other@example.org", ["x@example.com"])  # another sender
        changed = MESSAGE.replace(b"hi", b"hello")
        four, _ = _send(d, "a@example.org", ["x@example.com"], changed)  # other bytes
    assert len({one, two, three, four}) == 4
    assert _stored(server, two) == ["y@example.com"]
    assert sum(server.call(lambda s: s.status_counts()).values()) == 4


def test_identical_resend_is_folded_into_the_first(server: RunningServer) -> None:
    ids = []
    for _ in range(2):  # e.g. our 250 was lost after the commit and the client retries
        with greeted(server.smtp_port) as d:
            ids.append(_send(d, "a@example.org", ["x@example.com", "y@example.com"])[0])
    assert ids[0] == ids[1]
    assert sum(server.call(lambda s: s.status_counts()).values()) == 2  # two recipients


def test_without_message_id_nothing_is_folded(server: RunningServer) -> None:
    bare = b"Subject: disk full\r\n\r\nhi\r\n.\r\n"
    with greeted(server.smtp_port) as d:
        one, _ = _send(d, "a@example.org", ["x@example.com"], bare)
        two, _ = _send(d, "a@example.org", ["x@example.com"], bare)
    assert one != two
