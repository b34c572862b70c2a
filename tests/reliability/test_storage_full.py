"""A full disk under the data directory: every door answers with a temporary failure,
nothing is half-stored, and service comes back without a restart once space frees.
Postfix promises the same: 452 4.3.1 "Insufficient system storage", never a 250."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests.ingress.conftest import RunningServer, make_config, start_server
from tests.ingress.smtp_relay.dialog import greeted


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must be able to mount a tmpfs: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte; returns the filler to delete later."""
    filler = disk / f"filler-{uuid.uuid4().hex}"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    with contextlib.suppress(OSError), filler.open("ab") as f:
        while True:
            f.write(b"\0")
            f.flush()
    return filler


def smtp_send(server: RunningServer, body: bytes) -> tuple[int, str]:
    with greeted(server.smtp_port) as d:
        assert d.cmd("MAIL FROM:<a@example.org>")[0] == 250
        assert d.cmd("RCPT TO:<b@example.com>")[0] == 250
        assert d.cmd("DATA")[0] == 354
        d.send(body + b".\r\n")
        return d.read_reply()


def test_disk_full_gives_temporary_failures_then_recovers(small_disk: Path) -> None:
    ca = trustme.CA()
    cfg = make_config(small_disk, ca)
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 300  # 300 KB: needs new pages
    api_body = {"from": "a@example.org", "to": "b@example.com", "text": "y" * 200_000}
    for server in start_server(cfg, ca):
        assert smtp_send(server, b"Subject: before\r\n\r\nok\r\n")[0] == 250
        filler = fill(small_disk)
        code, text = smtp_send(server, big)
        assert code == 451 and "4.3.0" in text  # never 250, never 5xx
        r = httpx.post(
            f"{server.http_url}/v1/messages",
            json=api_body,
            timeout=30,
            headers={"Authorization": f"Bearer {server.send_key}"},
        )
        assert r.status_code == 503 and r.headers["Retry-After"]
        counts = server.call(lambda s: s.status_counts())
        assert sum(counts.values()) == 1  # only the message from before
        filler.unlink()  # space comes back; no restart
        assert smtp_send(server, big)[0] == 250
        r = httpx.post(
            f"{server.http_url}/v1/messages",
            json=api_body,
            timeout=30,
            headers={"Authorization": f"Bearer {server.send_key}"},
        )
        assert r.status_code == 202
        assert httpx.get(f"{server.http_url}/readyz").status_code == 200
        assert sum(server.call(lambda s: s.status_counts()).values()) == 3
