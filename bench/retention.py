"""Retention under load: 2 KB messages through `mailgate serve` (HTTP batches of 100, wrk
at 50 connections) with a retention of seconds to minutes, the data directory's disk use
(SQLite database + WAL + body segments) sampled as a curve. Two parts:

- paced: `--messages` (default 1,000,000) at a steady `--rate` (wrk's `delay()` spaces the
  requests), retention `--body-seconds` / `--message-seconds`; the curve every `--sample`
  seconds, the purge's measured capacity (messages it clears per second of its own work,
  from its log lines) and whether disk use levelled off: over the last third of the run
  it grows at most a tenth as fast as over the first third (and the band it stays in);
  then the same paced load with retention off (its latency beside the purge's, and the
  curve without a purge);
- flat out: `--flat-messages` as fast as the server takes them, with the purge
  (`--flat-body-seconds` / `--flat-message-seconds`) and then with retention off, in
  chunks of `--chunk` seconds: the ingest rates (target: with the purge >= 0.9x without)
  and both curves.

How messages finish: every message goes to an address on the suppression list, so the
door stores each recipient `suppressed` (a final status) with its event at once; the
purge then treats them as it treats delivered mail. Delivery is on, as deployed, so the
purge runs in the delivery child, not beside the doors. (Delivering to a sink instead
measures the delivery loop as much as retention: at full ingest speed the queue, not the
purge, would set the disk curve.)

Run it alone on the machine (`--lock /tmp/mailgate-bench.lock` waits for other benches
that take that lock): other work on the two cores moves both the ingest rate and the
purge's capacity; the machine's load average is printed at the start and the end.

    python bench/retention.py [--messages 1000000] [--rate 3000] [--body-seconds 60]
        [--message-seconds 120] [--interval 5] [--sample 5] [--flat-messages 1000000]
        [--flat-body-seconds 15] [--flat-message-seconds 30] [--chunk 5] [--skip-flat]
        [--skip-paced] [--skip-paced-baseline] [--lock /tmp/mailgate-bench.lock]
        [--log-dir DIR]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_ingest import HTTP_PORT, ONE, ensure_wrk, run_wrk
from machine import header
from smtp_ingest import stop, wait_ready

BATCH = 100
CONNECTIONS = 50
THREADS = 2
LISTED = "listed@example.com"  # on the suppression list: every recipient final at once
GROWTH_OK = 0.10  # levelled off: the last third grows at most a tenth as fast as the first
# (the trend, not the spread: body segments go 64 MB at a time, one per writing process,
# so the curve is a saw whose teeth do not shrink with the total)

# The paced load's wrk script. delay(), before each request, gives every thread's requests
# slots `period` ms apart, so the load is steady at the rate whatever the latency (a
# thread that fell more than a second behind starts over from now instead of bursting to
# catch up). LuaJIT's ffi reads the monotonic clock: wrk's Lua has none finer than seconds.
PACING = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } mg_timespec;
int clock_gettime(int clk_id, mg_timespec *tp);
]]
local ts = ffi.new("mg_timespec")
local period = {period}
local slot = nil
function delay()
  ffi.C.clock_gettime(1, ts)
  local now = tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  if slot == nil or slot < now - 1000 then slot = now end
  slot = slot + period
  return math.max(0, math.floor(slot - now))
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
wrk.body = [[{body}]]
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %f %f %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
"""


@dataclass
class Sample:
    t: float  # seconds since the load began
    sent: int  # messages acknowledged (the paced run: the target rate x t)
    db: int  # bytes on disk: mailgate.db
    wal: int  # mailgate.db-wal
    bodies: int  # mailgate.db.bodies/
    rows: int = -1  # messages kept (the paced run)

    @property
    def total(self) -> int:
        return self.db + self.wal + self.bodies


def disk_use(data: Path) -> tuple[int, int, int]:
    """Bytes on disk (allocated blocks) of the database, its WAL and the body segments."""

    def used(path: Path) -> int:
        try:
            return path.stat().st_blocks * 512
        except FileNotFoundError:  # a segment compaction just removed
            return 0

    bodies = data / "mailgate.db.bodies"
    segments = sum(used(bodies / name) for name in os.listdir(bodies)) if bodies.exists() else 0
    return used(data / "mailgate.db"), used(data / "mailgate.db-wal"), segments


def loadavg() -> str:
    """The machine's 1-minute load average: other work on it shows here."""
    return Path("/proc/loadavg").read_text().split()[0]


def kept(data: Path) -> int:
    """Messages in the database (a read beside the server: WAL lets it run beside writes)."""
    conn = sqlite3.connect(f"file:{data / 'mailgate.db'}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        conn.close()


def start(tmp: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, Path]:
    """serve (HTTP only, delivery on as deployed: the purge runs where delivery runs, the
    delivery child) with LISTED on the suppression list, a send key made first; its log
    as JSON lines at info in a file, where the purge's rounds are read from."""
    env = dict(os.environ)
    env.update(
        {
            "MAILGATE_SERVER_DATA_DIR": str(tmp / "mailgate"),
            "MAILGATE_SMTP_ENABLED": "false",
            "MAILGATE_DELIVERY_ENABLED": "true",
            "MAILGATE_HTTP_PORT": str(HTTP_PORT),
            "MAILGATE_SERVER_LOG_LEVEL": "info",
            "MAILGATE_SERVER_LOG_FORMAT": "json",
            **env_extra,
        }
    )
    cli = [sys.executable, "-m", "mailgate.cli"]
    made = subprocess.run(
        [*cli, "keys", "create", "--name", "bench", "--scope", "send"],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip().splitlines()[-1]
    subprocess.run(
        [*cli, "suppressions", "add", LISTED], env=env, cwd=tmp, capture_output=True, check=True
    )
    log = tmp / "serve.log"
    with log.open("wb") as f:
        proc = subprocess.Popen([*cli, "serve"], env=env, cwd=tmp, stderr=f)
    wait_ready(HTTP_PORT)
    return proc, key, log


@dataclass
class Purge:
    """The purge's rounds, from its log lines: what it cleared and the time it took."""

    rounds: int = 0
    messages: int = 0
    bodies: int = 0
    messages_seconds: float = 0.0
    bodies_seconds: float = 0.0
    compaction_seconds: float = 0.0
    freed: int = 0
    moved: int = 0  # bytes compaction copied (sparse segments rewritten)

    @classmethod
    def read(cls, log: Path) -> Purge:
        p = cls()
        for line in log.read_text(errors="replace").splitlines():
            if '"mailgate.retention"' not in line:
                continue
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "purged_messages" not in r:
                continue
            p.rounds += 1
            p.messages += r["purged_messages"]
            p.bodies += r["purged_bodies"]
            p.messages_seconds += r.get("messages_seconds", 0.0)
            p.bodies_seconds += r.get("bodies_seconds", 0.0)
            p.compaction_seconds += r.get("compaction_seconds", 0.0)
            p.freed += r.get("freed_bytes", 0)
            p.moved += r.get("moved_bytes", 0)
        return p

    @property
    def capacity(self) -> float:
        """Messages per second the purge clears when every message needs both steps (its
        row deleted and, before, its body emptied), pauses between batches included."""
        per = 0.0
        if self.messages:
            per += self.messages_seconds / self.messages
        if self.bodies:
            per += self.bodies_seconds / self.bodies
        return 1 / per if per else 0.0

    def describe(self, wall: float) -> str:
        busy = self.messages_seconds + self.bodies_seconds + self.compaction_seconds
        rows = self.messages / self.messages_seconds if self.messages_seconds else 0.0
        bodies = self.bodies / self.bodies_seconds if self.bodies_seconds else 0.0
        return (
            f"purge: {self.rounds} rounds, {self.messages:,} messages deleted"
            f" ({rows:,.0f}/s of that step's time), {self.bodies:,} bodies emptied"
            f" ({bodies:,.0f}/s), compaction freed {self.freed / 1e6:,.0f} MB (copied"
            f" {self.moved / 1e6:,.0f} MB, {self.compaction_seconds:,.0f} s);"
            f" capacity {self.capacity:,.0f} messages/s (both steps each);"
            f" busy {busy:,.0f} s of {wall:,.0f} s ({busy / wall:.0%})"
        )


def keep_log(args: argparse.Namespace, log: Path, name: str) -> None:
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, args.log_dir / f"serve-{name}.log")


def line(name: str, s: Sample, rate: float) -> str:
    rows = f" {s.rows:>9,} kept" if s.rows >= 0 else ""
    return (
        f"  {name:9} {s.t:6.0f} s {s.sent:>10,} sent {rate:7,.0f}/s  db {s.db / 1e6:6,.0f}"
        f" + wal {s.wal / 1e6:5,.0f} + bodies {s.bodies / 1e6:6,.0f} = {s.total / 1e6:6,.0f} MB"
        + rows
    )


def slope(points: list[Sample]) -> float:
    """Least-squares bytes per second."""
    n = len(points)
    mt = sum(p.t for p in points) / n
    mb = sum(p.total for p in points) / n
    var = sum((p.t - mt) ** 2 for p in points)
    return sum((p.t - mt) * (p.total - mb) for p in points) / var if var else 0.0


def verdict(samples: list[Sample]) -> str:
    """Levelled off: over the last third of the samples, disk use grows (least squares) at
    most GROWTH_OK as fast as over the first third; the band it stays in is printed."""
    third = len(samples) // 3
    if third < 3:
        return "too few samples for a verdict"
    first, last = samples[1 : third + 1], samples[-third:]
    low, high = min(s.total for s in last), max(s.total for s in last)
    early, late = slope(first), slope(last)
    ok = late <= GROWTH_OK * early
    return (
        f"last third ({last[0].t:.0f}-{last[-1].t:.0f} s) within {low / 1e6:,.0f}-"
        f"{high / 1e6:,.0f} MB ({(high - low) / high:.0%} apart), growing"
        f" {late / 1e6:+,.2f} MB/s against {early / 1e6:+,.2f} MB/s over the first third"
        f" ({late / early if early else 0:+.2f}x, levelled off at <= {GROWTH_OK:.2f}x): "
        + ("LEVELLED OFF" if ok else "NOT levelled off")
    )


def paced_run(args: argparse.Namespace, name: str, env: dict[str, str]) -> list[Sample]:
    """One paced load of --messages at --rate; prints the curve, the load's rate and
    latency, and (with retention on) the purge's rounds and the verdict."""
    seconds = args.messages / args.rate
    period = 1000 * THREADS * BATCH / args.rate  # ms between one thread's requests
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-retention-"))
    data = tmp / "mailgate"
    samples: list[Sample] = []
    try:
        proc, key, log = start(tmp, env)
        try:
            body = json.dumps({"messages": [dict(ONE, to=LISTED)] * BATCH})
            script = tmp / "paced.lua"
            script.write_text(
                PACING.replace("{period}", f"{period:.3f}")
                .replace("{key}", key)
                .replace("{body}", body)
            )
            wrk = subprocess.Popen(
                [
                    *("wrk", "-t", str(THREADS), "-c", str(CONNECTIONS)),
                    *("-d", f"{seconds:.0f}s", "--latency", "-s", str(script)),
                    f"http://127.0.0.1:{HTTP_PORT}/v1/messages/batch",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            began = time.monotonic()
            samples.append(Sample(0.0, 0, *disk_use(data), kept(data)))
            while wrk.poll() is None:
                time.sleep(max(0.0, began + len(samples) * args.sample - time.monotonic()))
                t = time.monotonic() - began
                if t > seconds + 1:
                    break
                s = Sample(t, int(min(t, seconds) * args.rate), *disk_use(data), kept(data))
                samples.append(s)
                print(line(name, s, args.rate), flush=True)
            out, _ = wrk.communicate()
            wall = time.monotonic() - began
        finally:
            stop(proc)
            keep_log(args, log, name.replace(" ", "-"))
        m = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) (\d+)", out)
        assert m, out
        requests, micros, errors = int(m.group(1)), int(m.group(2)), int(m.group(5))
        print(
            f"{name}: load {requests * BATCH:,} messages in {micros / 1e6:.0f} s ="
            f" {requests * BATCH / (micros / 1e6):,.0f}/s (target {args.rate:,}/s), p50"
            f" {float(m.group(3)) / 1000:.1f} ms p99 {float(m.group(4)) / 1000:.1f} ms,"
            f" {errors} errors (of {requests:,} requests); load average {loadavg()}"
        )
        purge = Purge.read(log)
        if purge.rounds:
            print(purge.describe(wall))
        print(f"{name}: disk {verdict(samples)}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return samples


def paced(args: argparse.Namespace, env: Callable[[float, float], dict[str, str]]) -> None:
    """The paced load with the purge, then (unless --skip-paced-baseline) the same load
    with retention off: what the purge costs the load's latency, and the curve it avoids."""
    print(
        f"paced: {args.messages:,} messages at {args.rate:,}/s"
        f" ({args.messages / args.rate:.0f} s), retention {args.body_seconds:g} s bodies /"
        f" {args.message_seconds:g} s messages, purge every {args.interval:g} s; a sample"
        f" every {args.sample:g} s",
        flush=True,
    )
    paced_run(args, "paced", env(args.body_seconds, args.message_seconds))
    if not args.skip_paced_baseline:
        print("paced, retention off: the same load", flush=True)
        plain = paced_run(args, "no purge", env(0, 0))
        print(f"no purge: disk at the end {plain[-1].total / 1e6:,.0f} MB", flush=True)


@dataclass
class Run:
    name: str
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    purge: Purge = field(default_factory=Purge)

    def rate(self, after: float = 0.0) -> float:
        """Messages per second over the samples from `after` seconds on."""
        first = next((s for s in self.samples if s.t >= after), self.samples[0])
        last = self.samples[-1]
        return (last.sent - first.sent) / max(last.t - first.t, 1e-9)


def flat_out(args: argparse.Namespace, name: str, env: dict[str, str]) -> Run:
    """As fast as it goes, in chunks of --chunk seconds with a sample after each."""
    run = Run(name)
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-retention-"))
    data = tmp / "mailgate"
    try:
        proc, key, log = start(tmp, env)
        body = json.dumps({"messages": [dict(ONE, to=LISTED)] * BATCH})
        try:
            began = time.monotonic()
            sent = 0
            run.samples.append(Sample(0.0, 0, *disk_use(data)))
            while sent < args.flat_messages:
                requests, _, _, _, errors, _ = run_wrk(
                    tmp, key, "/v1/messages/batch", body, args.chunk, CONNECTIONS, BATCH
                )
                sent += requests * BATCH
                run.errors += errors
                s = Sample(time.monotonic() - began, sent, *disk_use(data))
                run.samples.append(s)
                print(line(name, s, run.rate(s.t - args.chunk - 3)), flush=True)
            wall = time.monotonic() - began
        finally:
            stop(proc)
            keep_log(args, log, name.replace(" ", "-"))
        run.purge = Purge.read(log)
        if run.purge.rounds:
            print(run.purge.describe(wall))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return run


def flat(args: argparse.Namespace, env: Callable[[float, float], dict[str, str]]) -> None:
    runs = []
    for name, on in (("purge", True), ("no purge", False)):
        print(
            f"flat out, {name}: {args.flat_messages:,} messages"
            + (
                f", retention {args.flat_body_seconds:g} s / {args.flat_message_seconds:g} s"
                if on
                else ", retention off"
            ),
            flush=True,
        )
        settings = env(args.flat_body_seconds, args.flat_message_seconds) if on else env(0, 0)
        runs.append(flat_out(args, name, settings))
    purge, plain = runs
    # rates from the time the purge has all its work on (past the rows' cutoff) to the end
    since = args.flat_message_seconds
    with_purge, without = purge.rate(since), plain.rate(since)
    print(
        f"ingest: with purge {with_purge:,.0f}/s, without {without:,.0f}/s from {since:.0f} s on"
        f" ({with_purge / without:.2f}x, target >= 0.9x); whole runs"
        f" {purge.rate() / plain.rate():.2f}x; errors {purge.errors} / {plain.errors}"
    )
    print(
        f"disk at the end: with purge {purge.samples[-1].total / 1e6:,.0f} MB, without"
        f" {plain.samples[-1].total / 1e6:,.0f} MB; with purge: {verdict(purge.samples)};"
        f" load average {loadavg()}",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--rate", type=int, default=3000, help="paced: messages per second")
    p.add_argument("--body-seconds", type=float, default=60.0)
    p.add_argument("--message-seconds", type=float, default=120.0)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between purge rounds")
    p.add_argument("--sample", type=float, default=5.0, help="paced: seconds between samples")
    p.add_argument("--flat-messages", type=int, default=1_000_000)
    p.add_argument("--flat-body-seconds", type=float, default=15.0)
    p.add_argument("--flat-message-seconds", type=float, default=30.0)
    p.add_argument("--chunk", type=int, default=5, help="flat out: seconds of load a sample")
    p.add_argument("--skip-flat", action="store_true")
    p.add_argument("--skip-paced", action="store_true")
    p.add_argument("--skip-paced-baseline", action="store_true", help="no paced run without purge")
    p.add_argument("--log-dir", type=Path, help="keep each run's server log (JSON lines) here")
    p.add_argument(
        "--lock", type=Path, help="take this flock first (benches sharing a machine wait on it)"
    )
    args = p.parse_args()
    ensure_wrk()
    if args.lock is not None:
        held = args.lock.open("a")  # held until the process ends
        fcntl.flock(held, fcntl.LOCK_EX)
    header(None)
    print(
        f"load: HTTP batches of {BATCH} 2 KB messages, wrk {THREADS} threads,"
        f" {CONNECTIONS} connections; "
        + (f"holding {args.lock}" if args.lock else "no bench lock taken")
        + f"; load average {loadavg()}",
        flush=True,
    )

    def env(body_seconds: float, message_seconds: float) -> dict[str, str]:
        return {
            "MAILGATE_RETENTION_BODY_DAYS": str(body_seconds / 86400),
            "MAILGATE_RETENTION_MESSAGE_DAYS": str(message_seconds / 86400),
            "MAILGATE_RETENTION_INTERVAL": str(args.interval),
        }

    if not args.skip_paced:
        paced(args, env)
    if not args.skip_flat:
        flat(args, env)


if __name__ == "__main__":
    main()
