"""`mailgate webhooks`: add (the secret printed once, stored sealed), list, test, rotate,
remove; a URL leading inside refused with the reason."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli import mailgate


def test_webhooks_add_list_test_rotate_remove(tmp_path: Path) -> None:
    assert mailgate("init", "--dir", str(tmp_path), cwd=tmp_path).returncode == 0
    cfg = str(tmp_path / "mailgate.toml")
    env = {
        "MAILGATE_WEBHOOKS_ALLOW_HTTP": "true",
        "MAILGATE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "127.0.0.0/8",
    }

    def run(*args: str) -> tuple[str, str]:
        done = mailgate("webhooks", *args, "-c", cfg, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr

    secret, said = run("add", "http://127.0.0.1:9/in", "--event", "message.delivered")
    secret = secret.strip()
    assert secret.startswith("whsec_") and "shown once" in said
    hook_id = said.split()[1]
    listed, _ = run("list")
    assert hook_id in listed and secret not in listed and "enabled" in listed
    assert "queued evt_test_" in run("test", hook_id)[0]
    rotated, _ = run("rotate", hook_id)
    assert rotated.strip().startswith("whsec_") and rotated.strip() != secret
    assert (tmp_path / "data" / "mailgate.db").read_bytes().count(secret.encode()) == 0
    run("remove", hook_id)
    assert hook_id not in run("list")[0]
    inside = mailgate(
        "webhooks",
        "add",
        "https://169.254.169.254/x",
        "--event",
        "message.bounced",
        "-c",
        cfg,
        cwd=tmp_path,
    )
    assert inside.returncode == 1 and "not a public address" in inside.stderr
