"""Postfix's load tools: smtp-source (the sender every SMTP bench uses) and smtp-sink
(the receiver every relay delivers to), started and read the same way by every bench."""

from __future__ import annotations

import re
import resource
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SMTP_SOURCE, SMTP_SINK = "/usr/sbin/smtp-source", "/usr/sbin/smtp-sink"


@dataclass(frozen=True)
class SourceRun:
    """One smtp-source run: how long it took and the CPU smtp-source itself used."""

    messages: int
    seconds: float
    cpu: float  # user + system seconds of smtp-source (a child, so from RUSAGE_CHILDREN)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def children_cpu() -> float:
    """CPU seconds of every child this process has waited for (it grows as one is reaped)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def run_smtp_source(
    port: int,
    messages: int,
    sessions: int,
    size: int,
    sender: str = "bench@example.org",
    reuse: bool = True,
) -> SourceRun:
    """smtp-source to 127.0.0.1:port until every message is answered; `sender` is the
    envelope sender and, as smtp-source writes it, the From: header. reuse: each session
    keeps its connection for message after message (-d); else a connection per message,
    as a printer or an old app sends."""
    cpu_before = children_cpu()
    started = time.perf_counter()
    subprocess.run(
        [
            SMTP_SOURCE,
            *(["-d"] if reuse else []),
            "-s",
            str(sessions),
            "-m",
            str(messages),
            "-l",
            str(size),
            "-f",
            sender,
            "-t",
            "sink@example.com",
            f"127.0.0.1:{port}",
        ],
        check=True,
        timeout=1800,
    )
    seconds = time.perf_counter() - started
    return SourceRun(messages, seconds, children_cpu() - cpu_before)


def start_sink(port: int, log: Path | None = None) -> subprocess.Popen[bytes]:
    """smtp-sink on 127.0.0.1:port; with a log, its running "mesg=N" counter (-c) goes
    there for `sink_total`."""
    return subprocess.Popen(
        [SMTP_SINK, "-u", "nobody", "-c", f"127.0.0.1:{port}", "1000"],
        stdout=log.open("wb") if log else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else None,
    )


def stop_sink(sink: subprocess.Popen[bytes]) -> None:
    sink.terminate()
    sink.wait(10)


def sink_total(log: Path) -> int:
    """Messages the sink logging to `log` has received: the last counter in its tail (the
    log grows with every message, so only the tail is read)."""
    with log.open("rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 200))
        found = re.findall(rb"mesg=(\d+)", f.read())
    return int(found[-1]) if found else 0


def wait_delivered(log: Path, target: int, timeout: float) -> float:
    """Until the sink has `target` messages; the monotonic time it was seen (10 ms polls)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sink_total(log) >= target:
            return time.monotonic()
        time.sleep(0.01)
    raise RuntimeError(f"only {sink_total(log)} of {target} delivered in {timeout}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
