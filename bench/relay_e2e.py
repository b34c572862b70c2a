"""End to end: smtp-source → mailgate → smtp-sink, and smtp-source → Postfix → smtp-sink.

Both relay every message to smtp-sink on loopback (mailgate in smarthost mode, Postfix
with relayhost, the setup of ../shared/tools/postfix-relay.sh). Prints delivered msg/s
end to end (from the first message sent to the last one delivered) and the time to
drain a backlog queued while delivery was held back, with the ratio; beside each, the
server's CPU per delivered message (the machine's busy time from /proc/stat, less
smtp-source's, smtp-sink's and this script's), the machine's idle share and the ratio to
the no-queue ceiling printed at the top.

The backlogs: mailgate takes the n messages with delivery off and is restarted with it
on; the drain runs from the sooner of its answering and its first delivery. Postfix
takes them with defer_transports=smtp in force (the reload waits until the queue
manager that read the old setting has exited); `postqueue -j` must show all n deferred
and the sink nothing new before the release (`postqueue -f`, which delivers what
defer_transports holds), and the drain runs from the release to the n-th delivery
after it.

    python bench/relay_e2e.py [--messages 20000] [--sessions 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import CpuMeter, Rate, Stages, header, stage_sums
from smtp_ingest import (
    METRICS_URL,
    READY_PORT,
    ensure_postfix,
    quiet_disk,
    start_postfix,
    stop,
    wait_ready,
)
from smtp_load import run_smtp_source, sink_total, start_sink, stop_sink, wait_delivered, wait_port

MG_PORT, PF_PORT, SINK_PORT = 2735, 2635, 2636
SIZE = 2048


def mailgate_env(tmp: Path, deliver: bool, ingress_processes: int = 2) -> dict[str, str]:
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
            "MAILGATE_SERVER_INGRESS_PROCESSES": str(ingress_processes),
        }
    )
    return env


def spawn_mailgate(tmp: Path, deliver: bool, ingress_processes: int = 2) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mailgate.cli", "serve"],
        env=mailgate_env(tmp, deliver, ingress_processes),
        cwd=tmp,
    )


def is_ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=0.5):
            return True
    except OSError:  # refused while starting, or HTTPError 503
        return False


def flow(
    port: int, log: Path, n: int, sessions: int, sink_pid: int, metrics: str | None = None
) -> Rate:
    """n messages from smtp-source to their delivery at the sink, which starts at 0.
    metrics: mailgate's /metrics, for where its commits spent their time."""
    quiet_disk()
    meter = CpuMeter(load_pids=(sink_pid,), metrics_url=metrics)
    started = time.monotonic()
    run_smtp_source(port, n, sessions, SIZE)
    done = wait_delivered(log, n, 1800)
    return Rate(n / (done - started), meter.stop(n))


def mailgate_flow(tmp: Path, n: int, sessions: int) -> Rate:
    log = tmp / "sink-mg.log"
    sink = start_sink(SINK_PORT, log)
    try:
        wait_port(SINK_PORT)
        mg = spawn_mailgate(tmp, deliver=True)
        try:
            wait_ready(READY_PORT)
            return flow(MG_PORT, log, n, sessions, sink.pid, METRICS_URL)
        finally:
            stop(mg)
    finally:
        stop_sink(sink)
        shutil.rmtree(tmp / "mailgate", ignore_errors=True)


def drain_start(log: Path, sink_pid: int, timeout: float = 120) -> tuple[float, CpuMeter, str]:
    """When mailgate, just spawned, can drain: the sooner of its answering /readyz and
    its first delivery (its delivery process may start sending before the ingress
    answers), and which it was. A first delivery is dated to the poll before the one
    that saw it."""
    deadline = time.monotonic() + timeout
    before = (time.monotonic(), CpuMeter(load_pids=(sink_pid,)))
    while time.monotonic() < deadline:
        if sink_total(log) > 0:
            return (*before, "its first delivery, before it answered")
        now = (time.monotonic(), CpuMeter(load_pids=(sink_pid,)))
        if is_ready(READY_PORT):
            return (*now, "its answering")
        before = now
        time.sleep(0.01)
    raise RuntimeError(f"mailgate neither answered nor delivered in {timeout}s")


def mailgate_drain(tmp: Path, n: int, sessions: int) -> tuple[Rate, str]:
    """Fill with delivery off, then restart with it on into a fresh sink: the sink counts
    the backlog only. The rate, and what the drain was timed from. The restart runs no
    second ingress process: it would sit idle in a drain, and its start-up (a second or
    more of CPU, while the deliverer already sends) would be counted as draining."""
    mg = spawn_mailgate(tmp, deliver=False)
    try:
        wait_ready(READY_PORT)
        run_smtp_source(MG_PORT, n, sessions, SIZE)
    finally:
        stop(mg)
    log = tmp / "sink-mg2.log"
    sink = start_sink(SINK_PORT, log)
    try:
        wait_port(SINK_PORT)
        quiet_disk()
        mg = spawn_mailgate(tmp, deliver=True, ingress_processes=1)
        try:
            started, meter, start = drain_start(log, sink.pid)
            done = wait_delivered(log, n, 1800)
            use = meter.stop(n)
            # the commits' stages since this server started (it emptied its metrics):
            # read after the run, not polled during its start
            stages = Stages.between({}, stage_sums(METRICS_URL), from_start=True)
            use = dataclasses.replace(use, stages=stages)
            time.sleep(0.5)
            if sink_total(log) != n:  # more than the backlog: something was sent twice
                raise RuntimeError(f"the sink has {sink_total(log)} of a backlog of {n}")
            return Rate(n / (done - started), use), start
        finally:
            stop(mg)
    finally:
        stop_sink(sink)


def qmgr_pids() -> set[int]:
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "qmgr":
                    pids.add(int(proc.name))
            except OSError:  # exited while we looked
                pass
    return pids


def set_defer_transports(value: str) -> None:
    """defer_transports=value, in force when this returns: the queue manager reads it when
    it starts, and `postfix reload` only asks the running one to exit, so wait until
    every queue manager from before the reload is gone."""
    old = qmgr_pids()
    subprocess.run(["postconf", "-e", f"defer_transports={value}"], check=True)
    subprocess.run(["postfix", "reload"], check=True, capture_output=True)
    deadline = time.monotonic() + 30
    while qmgr_pids() & old:
        if time.monotonic() > deadline:
            raise RuntimeError("Postfix's queue manager did not restart after the reload")
        time.sleep(0.01)


def postfix_queue() -> Counter[str]:
    """Messages in Postfix's queue by queue name (incoming, active, deferred, hold)."""
    out = subprocess.run(["postqueue", "-j"], capture_output=True, text=True, check=True)
    return Counter(json.loads(line)["queue_name"] for line in out.stdout.splitlines() if line)


def wait_held(n: int, log: Path, base: int, timeout: float = 300) -> None:
    """Until all n are deferred in the queue, with nothing delivered since `base`."""
    deadline = time.monotonic() + timeout
    while True:
        queued = postfix_queue()
        if sink_total(log) != base:
            raise RuntimeError(f"the hold leaked: {sink_total(log) - base} delivered while held")
        if queued["deferred"] == n and queued.total() == n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Postfix holds {dict(queued)}, not {n} deferred")
        time.sleep(0.2)


def postfix_drain(log: Path, n: int, sessions: int, sink_pid: int) -> Rate:
    """Hold, fill, check the hold, release: the drain rate from the release. `postqueue
    -f` delivers past defer_transports ("unless someone issues a sendmail -q"), so the
    release needs no reload (one took 1.9 s, waiting for the queue manager to exit)."""
    deadline = time.monotonic() + 60  # the flowing run's last queue files being removed
    while postfix_queue().total():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"Postfix's queue is not empty before the backlog: {postfix_queue()}"
            )
        time.sleep(0.2)
    base = sink_total(log)
    set_defer_transports("smtp")
    run_smtp_source(PF_PORT, n, sessions, SIZE)
    wait_held(n, log, base)
    quiet_disk()
    if sink_total(log) != base:
        raise RuntimeError(f"the hold leaked: {sink_total(log) - base} delivered while held")
    meter = CpuMeter(load_pids=(sink_pid,))
    started = time.monotonic()
    subprocess.run(["postqueue", "-f"], check=True)
    done = wait_delivered(log, base + n, 60 + n / 20)
    return Rate(n / (done - started), meter.stop(n))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--sessions", type=int, default=20)
    args = p.parse_args()
    n = args.messages
    ensure_postfix()
    ceiling = header(args.sessions, max(n, 10_000)).ceiling
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-e2e-"))
    r: dict[str, Rate] = {}

    def show(name: str) -> None:
        print(f"  {name:17}: {r[name].describe(ceiling)}", flush=True)

    print(f"end to end, {n:,} messages of 2 KB, {args.sessions} smtp-source sessions")
    try:
        r["mailgate flowing"] = mailgate_flow(tmp, n, args.sessions)
        show("mailgate flowing")
        r["mailgate draining"], drain_from = mailgate_drain(tmp, n, args.sessions)
        show("mailgate draining")
        log = tmp / "sink-pf.log"
        sink = start_sink(SINK_PORT, log)
        try:
            start_postfix(PF_PORT, SINK_PORT)
            wait_port(PF_PORT)
            r["postfix flowing"] = flow(PF_PORT, log, n, args.sessions, sink.pid)
            show("postfix flowing")
            r["postfix draining"] = postfix_drain(log, n, args.sessions, sink.pid)
            show("postfix draining")
        finally:
            stop_sink(sink)
    finally:
        subprocess.run(["postconf", "-e", "defer_transports="], check=False, capture_output=True)
        subprocess.run(["postfix", "stop"], check=False, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    mg_flow, pf_flow = r["mailgate flowing"], r["postfix flowing"]
    mg_drain, pf_drain = r["mailgate draining"], r["postfix draining"]
    print(
        f"  mailgate: {mg_flow.rate:7,.0f} msg/s delivered; "
        f"backlog of {n:,} drained in {n / mg_drain.rate:.1f} s (timed from {drain_from})"
    )
    print(
        f"  postfix : {pf_flow.rate:7,.0f} msg/s delivered; "
        f"backlog of {n:,} drained in {n / pf_drain.rate:.1f} s (all {n:,} seen deferred "
        "by postqueue -j, none delivered, before the release)"
    )
    print(
        f"  ratio   : flow {mg_flow.rate / pf_flow.rate:.2f}x, drain "
        f"{mg_drain.rate / pf_drain.rate:.2f}x (target >= 2.5x)"
    )
    if ceiling:
        print(
            f"  ceiling : mailgate flow {mg_flow.rate / ceiling:.2f}x, drain "
            f"{mg_drain.rate / ceiling:.2f}x of {ceiling:,.0f} msg/s (target >= 0.4x)"
        )
    print(
        "  CPU/msg : mailgate / postfix flowing "
        f"{mg_flow.cpu.per_message_us / pf_flow.cpu.per_message_us:.2f}x, draining "
        f"{mg_drain.cpu.per_message_us / pf_drain.cpu.per_message_us:.2f}x (target <= 0.33x)"
    )


if __name__ == "__main__":
    main()
