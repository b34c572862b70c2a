"""SMTP ingest: Postfix's smtp-source against mailgate and against a durable Postfix.

Both receivers run on loopback in the same run: mailgate (`mailgate serve`, SQLite,
synchronous=FULL) and Postfix set up by ../shared/tools/postfix-relay.sh (queue files
fsynced before 250) relaying to smtp-sink. For 2 KB and 100 KB messages, prints msg/s
for each and the ratio; beside each rate the server's CPU per message (the whole machine's
busy time from /proc/stat, less smtp-source's, smtp-sink's and this script's) and the
machine's idle share, and for 2 KB the ratio to the no-queue ceiling printed at the top.
Then 2 KB mail sent with a connection per message (smtp-source without -d), to both and
against the ceiling measured the same way. Needs root for Postfix; installs postfix if
missing.

With --cpus (a taskset list, e.g. 0), mailgate and Postfix run on those CPUs only, as on
a smaller machine (the load generator and the ceiling do not): on one CPU serve runs as
one process, as it does by default on a one-CPU machine.

    python bench/smtp_ingest.py [--messages 20000] [--sessions 20] [--per-connection 10000]
                                [--cpus 0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import CpuMeter, Machine, Rate, header
from smtp_load import SMTP_SOURCE, run_smtp_source, start_sink, stop_sink, wait_port

ROOT = Path(__file__).resolve().parents[1]
POSTFIX_RELAY = ROOT / "scripts" / "postfix-relay"  # same setup as ../shared/tools
MAILGATE_PORT, POSTFIX_PORT, SINK_PORT = 2725, 2625, 2626
READY_PORT = 8724  # mailgate's HTTP port, for /readyz and /metrics
METRICS_URL = f"http://127.0.0.1:{READY_PORT}/metrics"  # where its commits spent their time


def ensure_postfix() -> None:
    if shutil.which("smtp-source") or Path(SMTP_SOURCE).exists():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], check=True, env=env)


def start_postfix(port: int, relay_port: int, cpus: str | None = None) -> None:
    """Postfix as a durable loopback relay (the shared reference setup), empty queue;
    with `cpus`, its master and daemons on those CPUs (the daemons it starts later are
    the master's children, which keep its CPUs)."""
    subprocess.run(
        ["bash", str(POSTFIX_RELAY), str(port), f"127.0.0.1:{relay_port}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(["postsuper", "-d", "ALL"], check=False, capture_output=True)
    wait_port(port)
    if cpus is not None:
        master = int(Path("/var/spool/postfix/pid/master.pid").read_text().split()[0])
        daemons = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
        for pid in [master, *map(int, daemons.stdout.split())]:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, capture_output=True
            )


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


def smtp_source(
    port: int, messages: int, sessions: int, size: int, sink_pid: int | None, reuse: bool = True
) -> Rate:
    """Run smtp-source from a quiet disk; its rate and the machine's CPU during it (and
    mailgate's, where its commits spent their time). sink_pid: the smtp-sink the
    receiver relays to, whose CPU is the load side's (None: it relays nowhere)."""
    quiet_disk()
    metrics = METRICS_URL if port == MAILGATE_PORT else None
    load = (sink_pid,) if sink_pid is not None else ()
    meter = CpuMeter(load_pids=load, metrics_url=metrics)
    run = run_smtp_source(port, messages, sessions, size, reuse=reuse)
    return Rate(run.rate, meter.stop(messages))


def start_mailgate(tmp: Path, deliver: bool, cpus: str | None = None) -> subprocess.Popen[bytes]:
    """mailgate on SQLite; with deliver, it relays to smtp-sink while it takes mail in,
    as the Postfix it is compared with does. With `cpus`, on those CPUs alone (from its
    start: serve lays out its processes by the CPUs it may use)."""
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
    pinned = ["taskset", "-c", cpus] if cpus is not None else []
    proc = subprocess.Popen(
        [*pinned, sys.executable, "-m", "mailgate.cli", "serve"], env=env, cwd=tmp
    )
    wait_ready(READY_PORT)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def per_connection(
    messages: int, sessions: int, tmp: Path, sink_pid: int, machine: Machine, cpus: str | None
) -> None:
    """2 KB mail with a connection per message (a printer, an old app): each message
    pays for a TCP handshake, the greeting, EHLO and QUIT. Measured against the ceiling
    of smtp-source -> smtp-sink sent the same way."""
    mg = start_mailgate(tmp, deliver=False, cpus=cpus)
    try:
        mine = smtp_source(MAILGATE_PORT, messages, sessions, 2048, sink_pid, reuse=False)
    finally:
        stop(mg)
        shutil.rmtree(tmp / "mailgate", ignore_errors=True)
    pf = smtp_source(POSTFIX_PORT, messages, sessions, 2048, sink_pid, reuse=False)
    of = machine.ceiling_per_connection
    assert of is not None, "header() measures it when asked for per-connection runs"
    print(f"   2 KB  mailgate, a connection per message  {mine.describe(of)}")
    print(f"   2 KB  postfix, a connection per message   {pf.describe(of)}")
    print(
        f"   2 KB, a connection per message: mailgate {mine.rate:7,.0f} msg/s   postfix "
        f"{pf.rate:7,.0f} msg/s   ratio {mine.rate / pf.rate:.2f}x; mailgate "
        f"{mine.rate / of:.2f}x the ceiling sent the same way, postfix {pf.rate / of:.2f}x",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--sizes", default="2048,102400")
    p.add_argument(
        "--per-connection",
        type=int,
        default=10_000,
        help="messages of 2 KB sent a connection each, to both and to the ceiling (0: skip)",
    )
    p.add_argument("--cpus", help="run mailgate and Postfix on these CPUs (taskset -c)")
    args = p.parse_args()
    ensure_postfix()
    machine = header(args.sessions, max(args.messages, 10_000), args.per_connection)
    ceiling = machine.ceiling
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-ingest-"))
    sink = start_sink(SINK_PORT)
    try:  # Postfix starts inside: a failed start must not leave the sink running
        start_postfix(POSTFIX_PORT, SINK_PORT, args.cpus)
        wait_port(POSTFIX_PORT)
        if args.cpus is not None:
            print(f"mailgate and Postfix on CPUs {args.cpus} alone (taskset)", flush=True)
        for size in (int(s) for s in args.sizes.split(",")):
            rates: dict[bool, Rate] = {}
            for deliver in (False, True):
                mg = start_mailgate(tmp, deliver, args.cpus)
                try:
                    rates[deliver] = smtp_source(
                        MAILGATE_PORT, args.messages, args.sessions, size, sink.pid
                    )
                finally:
                    stop(mg)
                    shutil.rmtree(tmp / "mailgate", ignore_errors=True)
            pf = smtp_source(POSTFIX_PORT, args.messages, args.sessions, size, sink.pid)
            of = ceiling if size == 2048 else None  # issue 13 names a ceiling ratio for 2 KB
            kb = f"{size // 1024:4d} KB"
            print(f"{kb}  mailgate            {rates[False].describe(of)}")
            print(f"{kb}  mailgate delivering {rates[True].describe(of)}")
            print(f"{kb}  postfix             {pf.describe(of)}")
            mg_rate, mgd_rate, pf_rate = rates[False].rate, rates[True].rate, pf.rate
            print(
                f"{size // 1024:4d} KB: mailgate {mg_rate:7,.0f} msg/s (delivering at the "
                f"same time: {mgd_rate:7,.0f})   postfix {pf_rate:7,.0f} msg/s   ratio "
                f"{mg_rate / pf_rate:.2f}x ({mgd_rate / pf_rate:.2f}x)",
                flush=True,
            )
            if of:
                print(
                    f"{size // 1024:4d} KB: mailgate {mg_rate / of:.2f}x the ceiling "
                    f"({mgd_rate / of:.2f}x delivering; target >= 0.5x), postfix "
                    f"{pf_rate / of:.2f}x",
                    flush=True,
                )
        if args.per_connection:
            per_connection(args.per_connection, args.sessions, tmp, sink.pid, machine, args.cpus)
    finally:
        subprocess.run(
            ["postfix", "stop"], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        stop_sink(sink)
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"smtp-source: {args.sessions} sessions, {args.messages:,} messages per run, "
        "mailgate with its default ingress processes; CPU/msg is the machine's busy time "
        "less smtp-source's and smtp-sink's; postfix relays while it takes mail in, as "
        '"mailgate delivering" does'
    )


if __name__ == "__main__":
    main()
