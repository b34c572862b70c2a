"""HTTP ingest: durable 202s per second at 50 connections, single and batch (100 per
request), 2 KB messages, with p50 / p99 latency from wrk; and in the same run Postfix's
SMTP ingest from smtp-source for comparison. Beside each rate: the server's CPU per
message (the machine's busy time from /proc/stat, less wrk's or smtp-source's and
smtp-sink's) and the machine's idle share. Installs wrk and postfix if missing.

    python bench/http_ingest.py [--seconds 20] [--connections 50]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import CpuMeter, CpuUse, header
from smtp_ingest import (
    POSTFIX_PORT,
    SINK_PORT,
    ensure_postfix,
    quiet_disk,
    smtp_source,
    start_postfix,
    stop,
    wait_ready,
)
from smtp_load import start_sink, stop_sink, wait_port

HTTP_PORT = 8725
TEXT = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. " * 24)[
    :1900
]
ONE = {"from": "bench@example.org", "to": "sink@example.com", "subject": "bench", "text": TEXT}

LUA = """
wrk.method = "POST"
{headers}
wrk.body = [[{body}]]
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %f %f %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
"""


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"],
        check=True,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
    )


def start_mailgate(
    tmp: Path,
    extra_env: dict[str, str] | None = None,
    prepare: Callable[[Path], None] | None = None,
    port: int = HTTP_PORT,
) -> tuple[subprocess.Popen[bytes], str]:
    """serve with the HTTP API only (delivery off unless extra_env says), a send key made
    first; prepare(database) runs between the two (the schema exists by then)."""
    env = dict(os.environ)
    env.update(
        {
            "MAILGATE_SERVER_DATA_DIR": str(tmp / "mailgate"),
            "MAILGATE_SMTP_ENABLED": "false",
            "MAILGATE_DELIVERY_ENABLED": "false",  # what a 202 costs, nothing else
            "MAILGATE_HTTP_PORT": str(port),
            "MAILGATE_SERVER_LOG_LEVEL": "warning",
            **(extra_env or {}),
        }
    )
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "mailgate.cli",
            "keys",
            "create",
            "--name",
            "bench",
            "--scope",
            "send",
        ],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip().splitlines()[-1]
    if prepare is not None:
        prepare(tmp / "mailgate" / "mailgate.db")
    proc = subprocess.Popen([sys.executable, "-m", "mailgate.cli", "serve"], env=env, cwd=tmp)
    wait_ready(port)
    return proc, key


def run_wrk(
    tmp: Path,
    key: str,
    path: str,
    body: str,
    seconds: int,
    connections: int,
    per_request: int,
    port: int = HTTP_PORT,
    headers: dict[str, str] | None = None,
) -> tuple[int, float, float, float, int, CpuUse]:
    """requests, requests/s, p50 s, p99 s, errors, and the CPU the server used (wrk, the
    load generator, is a child: its CPU is left out). `headers`: instead of a JSON body
    with `Authorization: Bearer <key>`."""
    quiet_disk()
    script = tmp / f"post-{port}.lua"
    sent = headers or {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    lines = "\n".join(f'wrk.headers["{name}"] = "{value}"' for name, value in sent.items())
    script.write_text(LUA.replace("{headers}", lines).replace("{body}", body))
    meter = CpuMeter(metrics_url=f"http://127.0.0.1:{port}/metrics")
    out = subprocess.run(
        [
            "wrk",
            "-t",
            "2",
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) (\d+)", out)
    assert m, out
    requests, micros = int(m.group(1)), int(m.group(2))
    return (
        requests,
        requests / (micros / 1e6),
        float(m.group(3)) / 1000,
        float(m.group(4)) / 1000,
        int(m.group(5)),
        meter.stop(requests * per_request),
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--connections", type=int, default=50)
    args = p.parse_args()
    ensure_wrk()
    ensure_postfix()
    header(20, 20_000)  # the sessions and messages of the Postfix run below
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-http-"))
    mg, key = start_mailgate(tmp)
    try:
        n, single, p50, p99, errors, cpu = run_wrk(
            tmp, key, "/v1/messages", json.dumps(ONE), args.seconds, args.connections, 1
        )
        print(
            f"single : {single:8,.0f} messages/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms "
            f"({n:,} requests, {errors} errors)  {cpu.describe()}",
            flush=True,
        )
        batch = json.dumps({"messages": [ONE] * 100})
        n, rps, bp50, bp99, berrors, bcpu = run_wrk(
            tmp, key, "/v1/messages/batch", batch, args.seconds, args.connections, 100
        )
        print(
            f"batch  : {rps * 100:8,.0f} messages/s  p50 {bp50:6.1f} ms  p99 {bp99:6.1f} ms "
            f"({n:,} requests of 100, {berrors} errors)  {bcpu.describe()}",
            flush=True,
        )
    finally:
        stop(mg)
    sink = start_sink(SINK_PORT)
    try:  # Postfix starts inside: a failed start must not leave the sink running
        start_postfix(POSTFIX_PORT, SINK_PORT)
        wait_port(POSTFIX_PORT)
        pf = smtp_source(POSTFIX_PORT, 20_000, 20, 2048, sink.pid)
    finally:
        subprocess.run(["postfix", "stop"], check=False, capture_output=True)
        stop_sink(sink)
        shutil.rmtree(tmp, ignore_errors=True)
    postfix = pf.rate
    print(
        f"postfix: {postfix:8,.0f} messages/s (smtp-source, 20 sessions, 2 KB)  "
        f"{pf.cpu.describe()} (relaying as it takes mail in)"
    )
    print(
        f"ratio  : single {single / postfix:.1f}x (target >= 5x, p99 <= 50 ms), "
        f"batch {rps * 100 / postfix:.1f}x (target >= 20x and >= 10,000/s)"
    )


if __name__ == "__main__":
    main()
