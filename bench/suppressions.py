"""Suppression lookups at the door: HTTP ingest with an empty suppression list against
the same with 1,000,000 entries (target >= 0.9x), single sends and batches of 100, 2 KB,
wrk at 50 connections; rounds alternate (empty, full, empty, full) so drift in the
machine's speed falls on both. One more run sends only to listed addresses (every
recipient suppressed: stored with its event, never queued). Beside each rate: the
server's CPU per message and the idle share.

    python bench/suppressions.py [--seconds 15] [--entries 1000000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_ingest import ONE, ensure_wrk, run_wrk, start_mailgate
from machine import header
from smtp_ingest import stop


def fill(db: Path, entries: int) -> float:
    """`entries` suppressions straight into the (stopped) server's database; seconds."""
    started = time.perf_counter()
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO suppressions (address, scope, reason, created_at) VALUES (?, '', ?, ?)",
            ((f"user{i:07}@list{i % 997}.example", "hard_bounce", 1.7e9) for i in range(entries)),
        )
        conn.execute(
            "INSERT INTO suppressions (address, scope, reason, created_at)"
            " VALUES ('listed@example.com', '', 'manual', 1.7e9)"
        )
    conn.close()
    return time.perf_counter() - started


def prepared(entries: int) -> tuple[Path, float]:
    """A data directory whose schema exists (made by `keys create` in start_mailgate's
    first call), with `entries` suppressions; the fill time."""
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-supp-"))
    proc, _ = start_mailgate(tmp)  # creates the database and its schema, then serves
    stop(proc)
    took = fill(tmp / "mailgate" / "mailgate.db", entries) if entries else 0.0
    return tmp, took


def measure(tmp: Path, seconds: int, to: str = ONE["to"]) -> tuple[float, float, str, str]:
    """single and batch rates with their CPU descriptions."""
    proc, key = start_mailgate(tmp)
    try:
        one = dict(ONE, to=to)
        _, single, _, _, errors, cpu = run_wrk(
            tmp, key, "/v1/messages", json.dumps(one), seconds, 50, 1
        )
        assert errors == 0, errors
        batch_body = json.dumps({"messages": [one] * 100})
        _, rps, _, _, berrors, bcpu = run_wrk(
            tmp, key, "/v1/messages/batch", batch_body, seconds, 50, 100
        )
        assert berrors == 0, berrors
    finally:
        stop(proc)
    return single, rps * 100, cpu.describe(), bcpu.describe()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--entries", type=int, default=1_000_000)
    args = p.parse_args()
    ensure_wrk()
    header(20, 20_000)
    results: dict[str, list[tuple[float, float]]] = {"empty": [], "full": []}
    for name in ("empty", "full", "empty", "full"):
        entries = args.entries if name == "full" else 0
        tmp, took = prepared(entries)
        try:
            single, batch, cpu, bcpu = measure(tmp, args.seconds)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        results[name].append((single, batch))
        filled = f" (filled in {took:.1f} s)" if entries else ""
        print(f"{name:5} {entries:>9,} entries{filled}", flush=True)
        print(f"  single: {single:8,.0f} messages/s  {cpu}", flush=True)
        print(f"  batch : {batch:8,.0f} messages/s  {bcpu}", flush=True)
    tmp, _ = prepared(args.entries)
    try:
        hit, hit_batch, cpu, bcpu = measure(tmp, args.seconds, to="listed@example.com")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"full, every recipient suppressed: single {hit:8,.0f}/s  {cpu}")
    print(f"                                  batch  {hit_batch:8,.0f}/s  {bcpu}")

    def mean(name: str, i: int) -> float:
        return sum(r[i] for r in results[name]) / len(results[name])

    single_ratio = mean("full", 0) / mean("empty", 0)
    batch_ratio = mean("full", 1) / mean("empty", 1)
    print(
        f"ratio : {args.entries:,} entries against none: single {single_ratio:.2f}x,"
        f" batch {batch_ratio:.2f}x (target >= 0.9x)"
    )


if __name__ == "__main__":
    main()
