"""`mailgate domains`: add prints the records, verify checks them in DNS (a server on
loopback), rotate and retire keys, remove; secrets never printed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.delivery.peers import ZoneResolver
from tests.test_cli import mailgate


def test_domains_add_verify_rotate_retire_remove(
    tmp_path: Path, dns_zone: tuple[ZoneResolver, int]
) -> None:
    zone, port = dns_zone
    assert mailgate("init", "--dir", str(tmp_path), cwd=tmp_path).returncode == 0
    cfg = str(tmp_path / "mailgate.toml")
    env = {"MAILGATE_DELIVERY_RESOLVER": f"127.0.0.1:{port}"}

    def run(*args: str) -> str:
        done = mailgate("domains", *args, "-c", cfg, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        assert "PRIVATE" not in done.stdout + done.stderr
        return done.stdout

    added = json.loads(run("add", "example.net", "--json"))
    assert added["status"] == "pending"
    shown = run("show", "example.net")
    assert "example.net: pending" in shown and "_domainkey.example.net" in shown
    for r in added["records"]:
        if r["purpose"] == "dkim":
            zone.add(r["name"], "TXT", r["value"])
    verified = json.loads(run("verify", "example.net", "--json"))
    assert verified["sending"] is True
    rotated = json.loads(run("rotate", "example.net", "--json"))
    old = {r["selector"] for r in added["records"] if r["purpose"] == "dkim"}
    assert len({r["selector"] for r in rotated["records"] if r["purpose"] == "dkim"} - old) == 2
    refused = mailgate(
        "domains", "retire", "example.net", min(old), "-c", cfg, cwd=tmp_path, env=env
    )
    assert refused.returncode == 1 and "rotate and verify the new key first" in refused.stderr
    assert "example.net" in run("list")
    secret = "tUMOuuMJbL1dYkyPHosuZ7kdRiz9YHcCu8gwcLf9xC0="
    url = "postgresql://mg:hunter2@127.0.0.1:5432/test"
    checked = mailgate(
        "check-config",
        "-c",
        cfg,
        cwd=tmp_path,
        env={"MAILGATE_SERVER_SECRET_KEY": secret, "MAILGATE_STORE_URL": url},
    )
    assert checked.returncode == 0, checked.stderr
    assert secret not in checked.stdout and "hunter2" not in checked.stdout
    assert "postgresql://mg:<set>@127.0.0.1" in checked.stdout
    run("remove", "example.net")
    gone = mailgate("domains", "show", "example.net", "-c", cfg, cwd=tmp_path, env=env)
    assert gone.returncode == 1 and "No domain example.net" in gone.stderr
    bad = mailgate("domains", "add", "-c", cfg, "not_a domain", cwd=tmp_path, env=env)
    assert bad.returncode == 1 and "not_a domain" in bad.stderr
