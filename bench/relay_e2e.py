"""End to end: smtp-source → mailgate → smtp-sink, and smtp-source → Postfix → smtp-sink.

Both relay every message to smtp-sink on loopback (mailgate in smarthost mode, Postfix
with relayhost, the setup of ../shared/tools/postfix-relay.sh). Prints delivered msg/s
end to end (from the first message sent to the last one delivered) and the time to
drain a backlog queued while delivery was held back, with the ratio.

    python bench/relay_e2e.py [--messages 20000] [--sessions 20]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smtp_ingest import (
    READY_PORT,
    ensure_postfix,
    smtp_source,
    start_postfix,
    stop,
    wait_port,
    wait_ready,
)

MG_PORT, PF_PORT, SINK_PORT = 2735, 2635, 2636


def start_sink(log: Path) -> subprocess.Popen[bytes]:
    """smtp-sink -c keeps a running "mesg=N" counter on stdout."""
    return subprocess.Popen(
        ["/usr/sbin/smtp-sink", "-u", "nobody", "-c", f"127.0.0.1:{SINK_PORT}", "1000"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def sink_total(log: Path) -> int:
    found = re.findall(rb"mesg=(\d+)", log.read_bytes()[-200:])
    return int(found[-1]) if found else 0


def wait_delivered(log: Path, target: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sink_total(log) >= target:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"only {sink_total(log)} of {target} delivered in {timeout}s")


def source(port: int, messages: int, sessions: int) -> None:
    smtp_source(port, messages, sessions, 2048)


def mailgate_env(tmp: Path, deliver: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "MAILGATE_SERVER_DATA_DIR": str(tmp / "mailgate"),
            "MAILGATE_SMTP_PORT": str(MG_PORT),
            "MAILGATE_SMTP_MAX_CONNECTIONS_PER_IP": "1000",
            "MAILGATE_SMTP_DEDUPE_WINDOW": "0",
            "MAILGATE_HTTP_PORT": str(READY_PORT),
            "MAILGATE_DELIVERY_ENABLED": "true" if deliver else "false",
            "MAILGATE_DELIVERY_SMARTHOST": f"127.0.0.1:{SINK_PORT}",
            "MAILGATE_DELIVERY_SMARTHOST_TLS": "none",
            "MAILGATE_DELIVERY_MAX_CONNECTIONS_PER_DOMAIN": "20",
            "MAILGATE_DELIVERY_CONCURRENCY": "20",
            "MAILGATE_SERVER_LOG_LEVEL": "warning",
        }
    )
    return env


def run_mailgate(tmp: Path, deliver: bool) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailgate.cli", "serve"], env=mailgate_env(tmp, deliver), cwd=tmp
    )
    wait_ready(READY_PORT)
    return proc


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--sessions", type=int, default=20)
    args = p.parse_args()
    n = args.messages
    ensure_postfix()
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-e2e-"))
    results: dict[str, float] = {}
    try:
        # mailgate, flowing
        log = tmp / "sink-mg.log"
        sink = start_sink(log)
        mg = run_mailgate(tmp, deliver=True)
        started = time.monotonic()
        source(MG_PORT, n, args.sessions)
        results["mailgate flow"] = n / (wait_delivered(log, n, 1800) - started)
        stop(mg)
        sink.terminate()
        sink.wait()
        shutil.rmtree(tmp / "mailgate")
        # mailgate, backlog: accept everything with delivery off, then drain
        mg = run_mailgate(tmp, deliver=False)
        source(MG_PORT, n, args.sessions)
        stop(mg)
        log = tmp / "sink-mg2.log"
        sink = start_sink(log)
        mg = run_mailgate(tmp, deliver=True)
        started = time.monotonic()  # from the moment it answers, as Postfix already does
        results["mailgate drain"] = wait_delivered(log, n, 1800) - started
        stop(mg)
        sink.terminate()
        sink.wait()
        # Postfix, flowing
        log = tmp / "sink-pf.log"
        sink = start_sink(log)
        start_postfix(PF_PORT, SINK_PORT)
        wait_port(PF_PORT)
        started = time.monotonic()
        source(PF_PORT, n, args.sessions)
        results["postfix flow"] = n / (wait_delivered(log, n, 1800) - started)
        # Postfix, backlog: hold the queue, fill it, release it
        subprocess.run(["postconf", "-e", "defer_transports=smtp"], check=True)
        subprocess.run(["postfix", "reload"], check=True, capture_output=True)
        source(PF_PORT, n, args.sessions)
        subprocess.run(["postconf", "-e", "defer_transports="], check=True)
        subprocess.run(["postfix", "reload"], check=True, capture_output=True)
        started = time.monotonic()
        subprocess.run(["postqueue", "-f"], check=True)
        results["postfix drain"] = wait_delivered(log, 2 * n, 1800) - started
        sink.terminate()
        sink.wait()
    finally:
        subprocess.run(["postconf", "-e", "defer_transports="], check=False, capture_output=True)
        subprocess.run(["postfix", "stop"], check=False, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"end to end, {n:,} messages of 2 KB, {args.sessions} smtp-source sessions")
    print(
        f"  mailgate: {results['mailgate flow']:7,.0f} msg/s delivered; "
        f"backlog of {n:,} drained in {results['mailgate drain']:.1f} s"
    )
    print(
        f"  postfix : {results['postfix flow']:7,.0f} msg/s delivered; "
        f"backlog of {n:,} drained in {results['postfix drain']:.1f} s"
    )
    print(
        f"  ratio   : flow {results['mailgate flow'] / results['postfix flow']:.2f}x, drain "
        f"{results['postfix drain'] / results['mailgate drain']:.2f}x (target >= 2x)"
    )


if __name__ == "__main__":
    main()
