"""Retention under a steady load: `--messages` (default 1,000,000) 2 KB messages through
`mailgate serve` (HTTP batches of 100, wrk at 50 connections, in chunks of a few seconds)
with a retention of minutes, the data directory's disk use sampled after each chunk and
printed as a curve; then the same load with retention off. Printed: both curves, the
ingest rates (target: with the purge >= 0.9x without), and whether disk use levelled off.

How messages finish: every message goes to an address on the suppression list, so the
door stores each recipient `suppressed` (a final status) with its event at once; the
purge then treats them as it treats delivered mail. Delivery is on, as deployed, so the
purge runs in the delivery child, not beside the doors. (Delivering
to a sink instead measures the delivery loop as much as retention: at full ingest speed
the queue, not the purge, would set the disk curve.)

    python bench/retention.py [--messages 1000000] [--body-seconds 60]
        [--message-seconds 120] [--interval 5] [--chunk 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_ingest import ONE, ensure_wrk, run_wrk, start_mailgate
from machine import header
from smtp_ingest import stop

BATCH = 100
LISTED = "listed@example.com"  # on the suppression list: every recipient final at once


def disk_use(path: Path) -> int:
    """Bytes the directory's files take on disk."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # a segment compaction just removed
                pass
    return total


def start(tmp: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """serve (HTTP only) with LISTED on the suppression list; delivery on, as deployed:
    the purge runs where delivery runs, the delivery child (with every recipient
    suppressed there is nothing to deliver)."""

    def listed(db: Path) -> None:
        conn = sqlite3.connect(db)
        with conn:
            conn.execute(
                "INSERT INTO suppressions (address, scope, reason, created_at)"
                " VALUES (?, '', 'manual', ?) ON CONFLICT DO NOTHING",
                (LISTED, time.time()),
            )
        conn.close()

    return start_mailgate(tmp, {"MAILGATE_DELIVERY_ENABLED": "true", **env_extra}, listed)


@dataclass
class Run:
    name: str
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (s, sent, bytes)
    errors: int = 0

    def rate(self, after: float = 0.0) -> float:
        """Messages per second over the samples from `after` seconds on."""
        points = [(t, n) for t, n, _ in self.samples]
        first = next(((t, n) for t, n in points if t >= after), points[0])
        last = points[-1]
        return (last[1] - first[1]) / max(last[0] - first[0], 1e-9)


def push(tmp: Path, env_extra: dict[str, str], name: str, messages: int, chunk: int) -> Run:
    run = Run(name)
    proc, key = start(tmp, env_extra)
    body = json.dumps({"messages": [dict(ONE, to=LISTED)] * BATCH})
    try:
        began = time.monotonic()
        sent = 0
        run.samples.append((0.0, 0, disk_use(tmp / "mailgate")))
        while sent < messages:
            requests, _, _, _, errors, _ = run_wrk(
                tmp, key, "/v1/messages/batch", body, chunk, 50, BATCH
            )
            sent += requests * BATCH
            run.errors += errors
            t = time.monotonic() - began
            used = disk_use(tmp / "mailgate")
            run.samples.append((t, sent, used))
            print(
                f"  {name:9} {t:7.1f} s {sent:>10,} sent {used / 1e6:9.1f} MB"
                f" {run.rate(t - chunk - 3):8,.0f}/s",
                flush=True,
            )
    finally:
        stop(proc)
    return run


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--body-seconds", type=float, default=60.0)
    p.add_argument("--message-seconds", type=float, default=120.0)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between purge rounds")
    p.add_argument("--chunk", type=int, default=5, help="seconds of load between disk samples")
    args = p.parse_args()
    ensure_wrk()
    header(50, args.messages)
    on = {
        "MAILGATE_RETENTION_BODY_DAYS": str(args.body_seconds / 86400),
        "MAILGATE_RETENTION_MESSAGE_DAYS": str(args.message_seconds / 86400),
        "MAILGATE_RETENTION_INTERVAL": str(args.interval),
    }
    off = {"MAILGATE_RETENTION_BODY_DAYS": "0", "MAILGATE_RETENTION_MESSAGE_DAYS": "0"}
    runs = []
    for name, env in (("purge", on), ("no purge", off)):
        tmp = Path(tempfile.mkdtemp(prefix="mailgate-retention-"))
        print(f"{name}: {args.messages:,} messages", flush=True)
        try:
            runs.append(push(tmp, env, name, args.messages, args.chunk))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    purge, plain = runs
    # rates from the time the purge has work on (past the rows' retention) to the end
    since = args.message_seconds
    with_purge, without = purge.rate(since), plain.rate(since)
    whole = purge.rate() / plain.rate()
    print(
        f"ingest: with purge {with_purge:,.0f}/s, without {without:,.0f}/s from {since:.0f} s on"
        f" ({with_purge / without:.2f}x, target >= 0.9x); whole runs {whole:.2f}x;"
        f" errors {purge.errors} / {plain.errors}"
    )
    late = [u for t, _, u in purge.samples if t >= 2 * since]
    if len(late) >= 2:
        print(
            f"disk with purge after {2 * since:.0f} s: {min(late) / 1e6:,.0f}-"
            f"{max(late) / 1e6:,.0f} MB (last {late[-1] / 1e6:,.0f} MB); without purge at"
            f" the end: {plain.samples[-1][2] / 1e6:,.0f} MB"
        )


if __name__ == "__main__":
    main()
