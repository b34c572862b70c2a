"""SMTP ingest: Postfix's smtp-source against mailgate and against a durable Postfix.

Both receivers run on loopback in the same run: mailgate (`mailgate serve`, SQLite,
synchronous=FULL) and Postfix set up by ../shared/tools/postfix-relay.sh (queue files
fsynced before 250) relaying to smtp-sink. For 2 KB and 100 KB messages, prints msg/s
for each and the ratio. Needs root for Postfix; installs postfix if missing.

    python bench/smtp_ingest.py [--messages 20000] [--sessions 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POSTFIX_RELAY = ROOT / "scripts" / "postfix-relay"  # same setup as ../shared/tools
MAILGATE_PORT, POSTFIX_PORT, SINK_PORT = 2725, 2625, 2626
READY_PORT = 8724  # mailgate's HTTP port, for /readyz only


def ensure_postfix() -> None:
    if shutil.which("smtp-source") or Path("/usr/sbin/smtp-source").exists():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], check=True, env=env)


def start_postfix(port: int, relay_port: int) -> None:
    """Postfix as a durable loopback relay (the shared reference setup), empty queue."""
    subprocess.run(
        ["bash", str(POSTFIX_RELAY), str(port), f"127.0.0.1:{relay_port}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(["postsuper", "-d", "ALL"], check=False, capture_output=True)
    wait_port(port)


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as s:
                s.recv(100)
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


def wait_ready(http_port: int, timeout: float = 60) -> None:
    """Until `/readyz` says 200: every ingress process of `serve` is listening (a load
    started earlier would put all its connections on the first one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2):
                return
        except OSError:  # refused, or HTTPError 503 while starting
            time.sleep(0.1)
    raise RuntimeError(f"mailgate on port {http_port} did not become ready")


def quiet_disk() -> None:
    """Flush what earlier runs left dirty and let the disk settle: gigabytes of writeback,
    or of deletes on this `discard`-mounted disk, slowed the next run's fsyncs (the first
    2 KB run measured 1,400-1,800 msg/s after a 100 KB run, 3,600 after a quiet start)."""
    os.sync()
    time.sleep(2)


def smtp_source(port: int, messages: int, sessions: int, size: int) -> float:
    """Run smtp-source from a quiet disk; return messages per second."""
    quiet_disk()
    started = time.perf_counter()
    subprocess.run(
        [
            "/usr/sbin/smtp-source",
            "-d",
            "-s",
            str(sessions),
            "-m",
            str(messages),
            "-l",
            str(size),
            "-f",
            "bench@example.org",
            "-t",
            "sink@example.com",
            f"127.0.0.1:{port}",
        ],
        check=True,
        timeout=1800,
    )
    return messages / (time.perf_counter() - started)


def start_mailgate(tmp: Path, deliver: bool) -> subprocess.Popen[bytes]:
    """mailgate on SQLite; with deliver, it relays to smtp-sink while it takes mail in,
    as the Postfix it is compared with does."""
    env = dict(os.environ)
    env.update(
        {
            "MAILGATE_SERVER_DATA_DIR": str(tmp / "mailgate"),
            "MAILGATE_SMTP_PORT": str(MAILGATE_PORT),
            "MAILGATE_SMTP_MAX_CONNECTIONS_PER_IP": "1000",
            "MAILGATE_SMTP_DEDUPE_WINDOW": "0",
            "MAILGATE_HTTP_PORT": str(READY_PORT),
            "MAILGATE_SERVER_LOG_LEVEL": "warning",
            "MAILGATE_DELIVERY_ENABLED": "true" if deliver else "false",
            "MAILGATE_DELIVERY_SMARTHOST": f"127.0.0.1:{SINK_PORT}",
            "MAILGATE_DELIVERY_SMARTHOST_TLS": "none",
        }
    )
    proc = subprocess.Popen([sys.executable, "-m", "mailgate.cli", "serve"], env=env, cwd=tmp)
    wait_ready(READY_PORT)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--sizes", default="2048,102400")
    args = p.parse_args()
    ensure_postfix()
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-ingest-"))
    sink = subprocess.Popen(
        ["/usr/sbin/smtp-sink", "-u", "nobody", "-c", f"127.0.0.1:{SINK_PORT}", "1000"],
        stdout=subprocess.DEVNULL,
    )
    try:  # Postfix starts inside: a failed start must not leave the sink running
        start_postfix(POSTFIX_PORT, SINK_PORT)
        wait_port(POSTFIX_PORT)
        for size in (int(s) for s in args.sizes.split(",")):
            rates = {}
            for deliver in (False, True):
                mg = start_mailgate(tmp, deliver)
                try:
                    rates[deliver] = smtp_source(MAILGATE_PORT, args.messages, args.sessions, size)
                finally:
                    stop(mg)
                    shutil.rmtree(tmp / "mailgate", ignore_errors=True)
            pf_rate = smtp_source(POSTFIX_PORT, args.messages, args.sessions, size)
            print(
                f"{size // 1024:4d} KB: mailgate {rates[False]:7,.0f} msg/s (delivering at the "
                f"same time: {rates[True]:7,.0f})   postfix {pf_rate:7,.0f} msg/s   ratio "
                f"{rates[False] / pf_rate:.2f}x ({rates[True] / pf_rate:.2f}x)",
                flush=True,
            )
    finally:
        subprocess.run(
            ["postfix", "stop"], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"smtp-source: {args.sessions} sessions, {args.messages:,} messages per run, "
        "mailgate with its default ingress processes"
    )


if __name__ == "__main__":
    main()
