"""The conversation from the relay issue, exactly as written, by swaks and byte by byte."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mailgate.models import RecipientStatus, Source
from tests.ingress.conftest import RunningServer
from tests.ingress.smtp_relay.dialog import Dialog

BODY = (
    'From: "Bob Example" <bob@example.org>\r\n'
    "To: Alice Example <alice@example.com>\r\n"
    "Cc: theboss@example.com\r\n"
    "Date: Tue, 15 Jan 2008 16:02:43 -0500\r\n"
    "Subject: Test message\r\n"
    "\r\n"
    "Hello Alice.\r\n"
    "This is a test message with 5 header fields and 4 lines in the message body.\r\n"
    "Your friend,\r\n"
    "Bob\r\n"
)


def test_issue_conversation_byte_by_byte(server: RunningServer) -> None:
    with Dialog(server.smtp_port) as d:
        assert d.read_reply()[0] == 220
        assert d.cmd("HELO relay.example.com")[0] == 250
        assert d.cmd("MAIL FROM:<bob@example.org>") == (250, "250 Ok")
        assert d.cmd("RCPT TO:<alice@example.com>") == (250, "250 Ok")
        assert d.cmd("RCPT TO:<theboss@example.com>") == (250, "250 Ok")
        assert d.cmd("DATA")[0] == 354
        d.send(BODY + ".\r\n")
        code, text = d.read_reply()
        assert code == 250
        m = re.fullmatch(r"250 Ok: queued as ([0-9A-Z]{26})", text)
        assert m, text
        assert d.cmd("QUIT")[0] == 221
    message_id = m.group(1)
    stored = server.call(lambda s: s.get_message(message_id))
    assert stored is not None and stored.source is Source.SMTP
    assert stored.sender == "bob@example.org"
    rcpts = server.call(lambda s: s.recipients(message_id))
    assert [(r.address, r.status) for r in rcpts] == [
        ("alice@example.com", RecipientStatus.QUEUED),
        ("theboss@example.com", RecipientStatus.QUEUED),
    ]
    raw = server.call(lambda s: s.get_raw(message_id))
    assert raw is not None
    assert raw.startswith(
        b"Received: from relay.example.com ([127.0.0.1])\r\n\tby mx.mailgate.test"
    )
    assert raw.endswith(BODY.encode())
    assert b"Message-ID: <" in raw  # added: the message had none
    assert raw.count(b"Date:") == 1  # kept: the message had one


def test_issue_conversation_with_swaks(server: RunningServer, tmp_path: Path) -> None:
    if shutil.which("swaks") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("swaks is required in CI (scripts/setup --test installs it)")
        pytest.skip("swaks is not installed: apt-get install swaks")
    data = tmp_path / "message.eml"
    data.write_text(BODY.replace("\r\n", "\n"))
    proc = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{server.smtp_port}",
            "--protocol",
            "SMTP",
            "--helo",
            "relay.example.com",
            "--from",
            "bob@example.org",
            "--to",
            "alice@example.com,theboss@example.com",
            "--data",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    codes = [int(line[4:7]) for line in proc.stdout.splitlines() if line.startswith("<-  ")]
    assert codes == [220, 250, 250, 250, 250, 354, 250, 221], proc.stdout
    queued = re.search(r"<-  250 Ok: queued as ([0-9A-Z]{26})", proc.stdout)
    assert queued, proc.stdout
    raw = server.call(lambda s: s.get_raw(queued.group(1)))
    assert raw is not None and BODY.encode() in raw  # swaks adds a blank line at the end
