"""`mailgate doctor`: one line per check, ok or PROBLEM, exit 1 on any problem — ports
that do not answer, a sending domain whose records are not in DNS (a real DNS server on
loopback), a clock behind stored mail; and all ok once they are fixed."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

from mailgate.models import NewMessage, Source
from mailgate.store import open_store
from tests.delivery.peers import start_dns
from tests.test_cli import mailgate


def test_doctor_names_each_problem_then_passes(tmp_path: Path) -> None:
    assert mailgate("init", "--dir", str(tmp_path), cwd=tmp_path).returncode == 0
    cfg = str(tmp_path / "mailgate.toml")
    dns, zone, dns_port = start_dns()
    smtp, http = socket.socket(), socket.socket()
    for sock in (smtp, http):  # free ports, held but not listening until the end
        sock.bind(("127.0.0.1", 0))
    smtp_port, http_port = smtp.getsockname()[1], http.getsockname()[1]
    try:
        env = {
            "MAILGATE_DELIVERY_RESOLVER": f"127.0.0.1:{dns_port}",
            "MAILGATE_SMTP_PORT": str(smtp_port),
            "MAILGATE_HTTP_PORT": str(http_port),
        }
        added = mailgate("domains", "add", "doc.test", "-c", cfg, "--json", cwd=tmp_path, env=env)
        assert added.returncode == 0, added.stderr

        async def future_message() -> None:  # stored "later" than now: a clock gone back
            store = open_store(f"sqlite:///{tmp_path / 'data' / 'mailgate.db'}")
            await store.open()
            later = time.time() + 3600
            await store.enqueue(
                NewMessage(b"x", "a@b.test", ("c@d.test",), Source.HTTP, created_at=later)
            )
            await store.close()

        asyncio.run(future_message())
        sick = mailgate("doctor", "-c", cfg, cwd=tmp_path, env=env)
        assert sick.returncode == 1
        lines = sick.stdout.splitlines()
        assert any(
            line.startswith(f"PROBLEM  smtp: 127.0.0.1:{smtp_port} does not answer")
            for line in lines
        )
        assert any(line.startswith("PROBLEM  domain doc.test: not verified: ") for line in lines)
        assert any(line.startswith("PROBLEM  clock:") and "went back" in line for line in lines)
        assert any(line.startswith("ok       certificate") for line in lines)

        for record in json.loads(added.stdout)["records"]:  # publish what it asked for
            value = record["value"]
            if record["type"] == "MX":
                pref, host = value.split()
                value = (int(pref), host)
            zone.add(record["name"], record["type"], value)
        for sock in (smtp, http):
            sock.listen()
        well = mailgate("doctor", "-c", cfg, cwd=tmp_path, env=env)
        lines = well.stdout.splitlines()
        assert any(line == "ok       domain doc.test: every record verified" for line in lines), (
            lines
        )
        assert all(line.startswith("ok") for line in lines if "clock" not in line), lines
    finally:
        smtp.close()
        http.close()
        dns.stop()
        dns.server.server_close()
