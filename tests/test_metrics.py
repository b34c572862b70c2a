"""Creating metrics changes nothing process-wide (share_metrics, in serve, does that)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client import values as prometheus_values

from mailgate.metrics import Metrics
from mailgate.models import Source
from mailgate.process import current_pid


def test_create_leaves_the_process_alone(tmp_path: Path) -> None:
    environ, value_class = dict(os.environ), prometheus_values.ValueClass
    Metrics.create()
    Metrics.create(tmp_path)
    assert dict(os.environ) == environ
    assert prometheus_values.ValueClass is value_class


def test_each_process_counts_on_its_own_registry() -> None:
    one, two = Metrics.create(), Metrics.create()
    one.count_accepted(Source.HTTP, 3)
    assert b'mailgate_accepted_messages_total{source="http"} 3.0' in generate_latest(one.registry)
    assert b"mailgate_accepted_messages_total{" not in generate_latest(two.registry)


def test_a_metric_that_fails_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Metric updates run after a commit (an exception there would answer a stored
    message as failed) and on the store's threads: a failing one is skipped."""
    metrics = Metrics.create()

    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics.commit_wait, "observe", broken)
    monkeypatch.setattr(metrics.accepted, "labels", broken)
    for _ in range(3):
        metrics.time_commit_wait(0.001)
        metrics.count_accepted(Source.SMTP, 1)
    assert caplog.text.count("No space left on device") == 2  # once each, not per call
    metrics.time_group(0.001, 3)  # the others still count
    assert b"mailgate_store_commit_group_writes_sum 3.0" in generate_latest(metrics.registry)


def test_an_app_with_children_leaves_the_process_alone(tmp_path: Path) -> None:
    """Only `serve` switches a process to shared metrics: an App made in a test (or any
    embedding program) with children to start must not change the interpreter's state,
    or every metric made after it in that process writes to files."""
    from mailgate.app import App, Role
    from mailgate.config import Config

    environ, value_class = dict(os.environ), prometheus_values.ValueClass
    cfg = Config.model_validate(
        {"server": {"data_dir": str(tmp_path), "ingress_processes": 2, "delivery_process": True}}
    )
    app = App(cfg, Role.ALL)
    assert app.shares_ports and app.child_delivers
    assert dict(os.environ) == environ
    assert prometheus_values.ValueClass is value_class


def test_the_kept_process_id_follows_a_fork() -> None:
    """prometheus_client names a process's metric file by current_pid(): a forked child
    must get its own id, never its parent's (their values would mix in one file)."""
    assert current_pid() == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report what it sees, then leave at once
        os.write(write, f"{current_pid()} {os.getpid()}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        kept, real = f.read().split()
    os.waitpid(child, 0)
    assert kept == real != str(os.getpid())
    assert current_pid() == os.getpid()
