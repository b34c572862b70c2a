"""SIGKILL under SMTP and HTTP load, restart, drain to a recording sink: every message
acknowledged with 250 / 202 is delivered; a duplicate only where the kill came while the
message was in flight to the sink. Postfix promises the same (its queue file is fsynced
before the 250, and a delivery cut short is retried: at-least-once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.conftest import RESULTS
from tests.reliability.harness import crash_case, destination_case

RUNS = int(os.environ.get("CHAOS_CRASH_RUNS", "5"))  # bench/chaos.py runs 20


@pytest.mark.slow
def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    results = [crash_case(tmp_path / f"run{seed}", seed) for seed in range(RUNS)]
    RESULTS.extend(results)
    for r in results:
        assert r.acked > 0, f"{r.name}: the loader got nothing acknowledged"
        assert not r.lost, f"{r.name}: acknowledged but never delivered: {r.lost[:10]}"
        assert not r.unexplained_duplicates, f"{r.name}: {r.unexplained_duplicates[:10]}"
        assert r.left_queued == 0, f"{r.name}: {r.left_queued} recipients still queued"
        assert r.clean_exit, f"{r.name}: SIGTERM did not end the server cleanly"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["down", "storm"])
def test_receiver_faults_under_load_deliver_everything_once(tmp_path: Path, kind: str) -> None:
    r = destination_case(tmp_path, kind)
    RESULTS.append(r)
    assert r.acked > 0 and not r.lost and r.left_queued == 0 and r.clean_exit
    assert not r.duplicated, "a 421 or a refused connection must not cause a resend"
