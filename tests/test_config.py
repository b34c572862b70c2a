"""config: one schema, TOML + environment, one clear line per mistake."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailgate import config
from mailgate.config import load_config, render_config_docs
from mailgate.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_docs_config_md_is_generated_from_the_schema() -> None:
    assert (ROOT / "docs" / "config.md").read_text() == render_config_docs(), (
        "docs/config.md is stale: run `mailgate config-docs --output docs/config.md`"
    )


def test_defaults_are_safe() -> None:
    cfg = load_config(environ={})
    assert cfg.smtp.host == "127.0.0.1" and cfg.smtp.port == 2525
    assert cfg.smtp.trusted_networks == ["127.0.0.0/8", "::1/128"]
    assert cfg.smtp.allow_plaintext_auth is False
    assert cfg.store.unsafe_no_fsync is False
    assert cfg.store_url.endswith("data/mailgate.db")


def test_one_cpu_runs_one_process_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On one CPU serve's children cost more than they give (docs/benchmarks.md): unset,
    one process takes mail in and delivers it; whatever is set stays as set."""
    monkeypatch.setattr(config, "usable_cpus", lambda: 1)
    cfg = load_config(environ={})
    assert (cfg.server.ingress_processes, cfg.server.delivery_process) == (1, False)
    cfg = load_config(environ={"MAILGATE_SERVER_INGRESS_PROCESSES": "2"})
    assert (cfg.server.ingress_processes, cfg.server.delivery_process) == (2, False)
    path = tmp_path / "m.toml"
    path.write_text("[server]\ndelivery_process = true\n")
    cfg = load_config(path, environ={})
    assert (cfg.server.ingress_processes, cfg.server.delivery_process) == (1, True)
    monkeypatch.setattr(config, "usable_cpus", lambda: 2)
    cfg = load_config(environ={})
    assert (cfg.server.ingress_processes, cfg.server.delivery_process) == (2, True)


def test_usable_cpus_heeds_a_cgroup_quota(tmp_path: Path) -> None:
    """v2 (cpu.max) or v1 (cfs quota and period), on the process's own cgroup or any
    parent up to the root (a systemd CPUQuota, a container without its own namespace)."""
    mine = len(os.sched_getaffinity(0))
    own = tmp_path / "self-cgroup"
    unit = tmp_path / "system.slice" / "mailgate.service"
    unit.mkdir(parents=True)
    own.write_text("0::/system.slice/mailgate.service\n")
    assert config.usable_cpus(tmp_path, own) == mine  # no limit anywhere
    (unit / "cpu.max").write_text("max 100000\n")
    assert config.usable_cpus(tmp_path, own) == mine
    (tmp_path / "system.slice" / "cpu.max").write_text("50000 100000\n")  # a parent's half
    assert config.usable_cpus(tmp_path, own) == 1
    (tmp_path / "system.slice" / "cpu.max").write_text("150000 100000\n")  # one and a half
    assert config.usable_cpus(tmp_path, own) == min(mine, 2)
    (unit / "cpu.max").write_text("100000 0\n")  # nonsense: no limit, no crash
    (tmp_path / "system.slice" / "cpu.max").write_text("max 100000\n")
    assert config.usable_cpus(tmp_path, own) == mine
    v1 = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    own.write_text("5:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    assert config.usable_cpus(tmp_path, own) == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert config.usable_cpus(tmp_path, own) == mine
    assert config.usable_cpus(tmp_path / "none", tmp_path / "none") == mine


def test_one_cpu_keeps_delivery_children_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "usable_cpus", lambda: 1)
    cfg = load_config(environ={"MAILGATE_SERVER_DELIVERY_PROCESSES": "2"})
    assert cfg.server.ingress_processes == 1
    assert cfg.server.delivery_process and cfg.server.delivery_processes == 2


def test_toml_and_environment_override(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[smtp]\nport = 2600\nmax_recipients = 7\n")
    cfg = load_config(
        path,
        environ={
            "MAILGATE_SMTP_PORT": "2700",
            "MAILGATE_SMTP_TRUSTED_NETWORKS": "10.0.0.0/8,::1/128",
        },
    )
    assert cfg.smtp.port == 2700 and cfg.smtp.max_recipients == 7
    assert cfg.smtp.trusted_networks == ["10.0.0.0/8", "::1/128"]


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[smtp]\nport = 'abc'\n", {}, "config: smtp.port: Input should be a valid integer"),
        (
            "[smtp]\nport = 70000\n",
            {},
            "config: smtp.port: Input should be less than or equal to 65535",
        ),
        ("[smtp]\nprot = 25\n", {}, "config: smtp.prot: unknown setting"),
        ("[nonsense]\nx = 1\n", {}, "config: nonsense: unknown setting"),
        ("[smtp]\ntrusted_networks = ['not-a-net']\n", {}, "config: smtp.trusted_networks"),
        ("", {"MAILGATE_SMTP_PROT": "1"}, "config: unknown environment setting MAILGATE_SMTP_PROT"),
        ("", {"MAILGATE_STORE_UNSAFE_NO_FSYNC": "perhaps"}, "config: store.unsafe_no_fsync"),
        ("[smtp\n", {}, "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_line(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "m.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_one_recipient_cap_for_every_way_in(tmp_path: Path) -> None:
    cfg = load_config(environ={})
    assert cfg.accept.max_recipients == cfg.smtp.max_recipients == 1000
    assert cfg.http.max_recipients == 1000
    cfg = load_config(environ={"MAILGATE_ACCEPT_MAX_RECIPIENTS": "50"})
    assert (cfg.accept.max_recipients, cfg.smtp.max_recipients, cfg.http.max_recipients) == (
        50,
        50,
        50,
    )


def test_old_recipient_caps_are_deprecated_aliases(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "mailgate.toml"
    path.write_text("[smtp]\nmax_recipients = 7\n[http]\nmax_recipients = 7\n")
    cfg = load_config(path, environ={})
    assert (cfg.accept.max_recipients, cfg.smtp.max_recipients, cfg.http.max_recipients) == (
        7,
        7,
        7,
    )
    assert "smtp.max_recipients and http.max_recipients is deprecated" in caplog.text
    # two different caps cannot both hold: start-up stops and says what to write instead
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={"MAILGATE_HTTP_MAX_RECIPIENTS": "1000"})
    assert str(err.value) == (
        "config: smtp.max_recipients = 7, http.max_recipients = 1000: recipients are now"
        " capped by one setting, [accept] max_recipients; set it alone"
    )


def test_delivery_children_split_the_connection_caps() -> None:
    cfg = load_config(
        environ={
            "MAILGATE_SERVER_DELIVERY_PROCESSES": "3",
            "MAILGATE_DELIVERY_MAX_CONNECTIONS_PER_DOMAIN": "10",
            "MAILGATE_DELIVERY_DOMAIN_RATE": "6",
        }
    )
    share = cfg.delivery_share()
    assert (share.max_connections_per_domain, share.max_connections_per_host) == (3, 6)
    assert share.domain_rate == 2.0  # together: 9 <= 10 connections, 18 <= 20, 6 msg/s
    assert load_config(environ={}).delivery_share() == load_config(environ={}).delivery
    with pytest.raises(ConfigError, match=r"server.delivery_processes \(3\) is more than"):
        load_config(
            environ={
                "MAILGATE_SERVER_DELIVERY_PROCESSES": "3",
                "MAILGATE_DELIVERY_MAX_CONNECTIONS_PER_DOMAIN": "2",
            }
        )


def test_every_section_takes_environment_overrides() -> None:
    """Each section of the schema is reachable by MAILGATE_<SECTION>_<KEY> (the domains
    and webhooks sections once were not)."""
    from mailgate.config import SECTIONS, Config

    assert set(SECTIONS) == set(Config.model_fields)
    cfg = load_config(
        environ={
            "MAILGATE_DOMAINS_REQUIRE_VERIFIED": "true",
            "MAILGATE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "127.0.0.0/8,10.0.0.0/8",
        }
    )
    assert cfg.domains.require_verified is True
    assert cfg.webhooks.allow_private_networks == ["127.0.0.0/8", "10.0.0.0/8"]
