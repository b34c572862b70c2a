"""Crash-under-load harness shared by tests/reliability and bench/chaos.py.

A real `mailgate serve` process relays (smarthost mode) to a recording sink process. A
loader sends over SMTP and HTTP, each message carrying a unique `X-Chaos-Seq` header, and
records every sequence acknowledged with 250 / 202. The server is SIGKILLed at a random
moment, restarted, and the queue drains to the sink. A case passes when every acknowledged
sequence reached the sink, nothing is left queued, and every sequence delivered twice
belongs to a recipient whose lease was taken over after the kill (in flight to the sink).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx

from mailgate import keys
from mailgate.models import Scope
from mailgate.store import open_store
from mailgate.store.sqlite.bodies import BodyFiles

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


def wait_ready(http_port: int, timeout: float = 30.0) -> None:
    """Until `/readyz` says 200: serve and all its ingress children are listening."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"not ready after {timeout}s")


def child_pids(pid: int, role: str) -> list[int]:
    """The `serve --role <role>` children of process `pid`."""
    out = subprocess.run(
        ["pgrep", "-P", str(pid), "-f", f"serve --role {role}"], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


class Sink:
    """The recording sink process (tests/reliability/recording_sink.py)."""

    def __init__(self, tmp: Path, *extra: str, port: int | None = None) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port, self.log = port or free_port(), tmp / "sink.log"
        self.log.touch()
        args = [str(self.port), str(self.log), *extra]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.recording_sink", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == b"ready"
        self.proc.stdout.close()

    def delivered(self) -> Counter[str]:
        return Counter(line for line in self.log.read_text().split("\n") if line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class Server:
    """`mailgate serve` as a child process, relaying everything to the sink."""

    def __init__(
        self, tmp: Path, sink_port: int, lease_seconds: float = 120.0, store_url: str = ""
    ) -> None:
        self.tmp, self.data = tmp, tmp / "data"
        self.url = store_url or f"sqlite:///{self.data / 'mailgate.db'}"
        self.smtp_port, self.http_port = free_port(), free_port()
        self.config = tmp / "mailgate.toml"
        self.config.write_text(
            f"""
[server]
hostname = "mailgate.chaos.test"
data_dir = "{self.data}"
ingress_processes = 2
delivery_process = true
[store]
url = "{self.url}"
lease_seconds = {lease_seconds}
[smtp]
port = {self.smtp_port}
max_connections_per_ip = 1000
[http]
port = {self.http_port}
rate_limit_per_second = 0
[delivery]
smarthost = "127.0.0.1:{sink_port}"
smarthost_tls = "none"
tls = "none"
retry_first = 0.5
retry_max = 2.0
concurrency = 8
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def make_key(self) -> str:
        async def create() -> str:
            store = open_store(self.url)
            await store.open()
            try:
                _, secret = await keys.create_key(store, "chaos", [Scope.SEND, Scope.ADMIN])
                return secret
            finally:
                await store.close()

        return asyncio.run(create())

    def start(self) -> None:
        self.starts += 1
        with (self.tmp / f"server-{self.starts}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailgate", "serve", "--config", str(self.config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_port(self.smtp_port)
            wait_ready(self.http_port)
        except TimeoutError:
            raise RuntimeError(f"mailgate did not start: {self.logs()[-2000:]}") from None

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def logs(self) -> str:
        return "".join(p.read_text() for p in sorted(self.tmp.glob("server-*.log")))

    @property
    def db(self) -> Path:
        return self.data / "mailgate.db"


@dataclass
class Tally:
    """What the loader saw."""

    acked: dict[str, str] = field(default_factory=dict)  # sequence -> message id
    sent: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # reply code -> count
    errors: int = 0


def _smtp_message(seq: str) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "loader@chaos.test", "sink@dest.test", f"seq {seq}"
    m["X-Chaos-Seq"] = seq
    m.set_content(f"message {seq}\n" + "x" * 500)
    return m


async def _smtp_loader(port: int, prefix: str, tally: Tally, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
        try:
            await client.connect()
            while not stop.is_set():
                n += 1
                seq = f"{prefix}-{n}"
                tally.sent += 1
                _, reply = await client.send_message(_smtp_message(seq))
                queued = reply.partition("Ok: queued as ")[2].strip()
                assert queued, f"a 250 without a queue id: {reply!r}"
                tally.acked[seq] = queued
        except aiosmtplib.SMTPResponseException as exc:
            tally.refused[str(exc.code)] += 1
            await asyncio.sleep(0.05)
        except (aiosmtplib.SMTPException, OSError):
            tally.errors += 1
            await asyncio.sleep(0.05)
        finally:
            client.close()


async def _http_loader(port: int, key: str, prefix: str, tally: Tally, stop: asyncio.Event) -> None:
    n = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        while not stop.is_set():
            n += 1
            seq = f"{prefix}-{n}"
            body = {
                "from": "loader@chaos.test",
                "to": ["sink@dest.test"],
                "subject": f"seq {seq}",
                "text": f"message {seq}",
                "headers": {"X-Chaos-Seq": seq},
            }
            tally.sent += 1
            try:
                r = await client.post("/v1/messages", json=body, headers=headers)
            except httpx.HTTPError:
                tally.errors += 1
                await asyncio.sleep(0.05)
                continue
            if r.status_code == 202:
                tally.acked[seq] = r.json()["id"]
            else:
                tally.refused[str(r.status_code)] += 1
                await asyncio.sleep(0.05)


async def load_until(
    server: Server, key: str, tally: Tally, stop: asyncio.Event, tag: str, workers: int = 4
) -> None:
    await asyncio.gather(
        *(_smtp_loader(server.smtp_port, f"{tag}s{i}", tally, stop) for i in range(workers)),
        *(_http_loader(server.http_port, key, f"{tag}h{i}", tally, stop) for i in range(workers)),
    )


def run_load(server: Server, key: str, tally: Tally, seconds: float, tag: str) -> None:
    """Load for `seconds`, then stop the loader (the server keeps running)."""

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(load_until(server, key, tally, stop, tag))
        await asyncio.sleep(seconds)
        stop.set()
        await task

    asyncio.run(go())


def stop_under_load(
    server: Server, key: str, tally: Tally, after: float, tag: str, how: Callable[[], object]
) -> None:
    """Load, stop the server `after` seconds in (`how`), and let the loader notice."""

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(load_until(server, key, tally, stop, tag))
        await asyncio.sleep(after)
        await asyncio.to_thread(how)
        stop.set()
        await task

    asyncio.run(go())


def active_count(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(
            conn.execute(
                "SELECT count(*) FROM recipients WHERE status IN ('queued', 'deferred')"
            ).fetchone()[0]
        )
    finally:
        conn.close()


def wait_drained(server: Server, sink: Sink, acked: set[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if acked <= set(sink.delivered()) and active_count(server.db) == 0:
            return
        time.sleep(0.2)


def ids_with_seq(db: Path, seqs: list[str]) -> dict[str, str]:
    """The message id carrying each X-Chaos-Seq (bodies in the row or in body files)."""
    wanted = {f"X-Chaos-Seq: {seq}\r\n".encode(): seq for seq in seqs}
    bodies = BodyFiles(db.with_name(db.name + ".bodies"))
    conn = sqlite3.connect(db)
    try:
        found = {}
        rows = conn.execute("SELECT id, raw, body_file, body_offset, size FROM messages")
        for message_id, raw, name, offset, size in rows:
            body = bytes(raw) if name is None else bodies.read(name, offset, size)
            for needle, seq in wanted.items():
                if needle in body:
                    found[seq] = message_id
        return found
    finally:
        conn.close()


def lease_taken_over(db: Path, message_id: str) -> bool:
    conn = sqlite3.connect(db)
    try:
        return (
            conn.execute(
                "SELECT 1 FROM events WHERE message_id = ? AND kind = 'lease_expired'",
                (message_id,),
            ).fetchone()
            is not None
        )
    finally:
        conn.close()


@dataclass
class CaseResult:
    name: str
    acked: int
    delivered: int
    lost: list[str]
    duplicated: list[str]
    unexplained_duplicates: list[str]
    left_queued: int
    clean_exit: bool
    seconds: float

    @property
    def passed(self) -> bool:
        return (
            not self.lost
            and not self.unexplained_duplicates
            and self.left_queued == 0
            and self.clean_exit
        )


def crash_case(tmp: Path, seed: int) -> CaseResult:
    """One run: load, SIGKILL at a random moment, restart, drain, compare."""
    return _stop_case(tmp, seed, "crash", Server.kill)[0]


def shutdown_case(tmp: Path, seed: int) -> tuple[CaseResult, Tally]:
    """SIGTERM under load: the server ends cleanly and in time, clients get 421 / 503
    or a refused connection, and after a restart everything acknowledged is delivered."""
    return _stop_case(tmp, seed, "sigterm", lambda server: server.terminate() == 0)


def _stop_case(
    tmp: Path, seed: int, name: str, how: Callable[[Server], object]
) -> tuple[CaseResult, Tally]:
    rng = random.Random(seed)
    started = time.monotonic()
    tally = Tally()
    stopped: list[object] = []
    with running(tmp) as (server, sink, key):
        after = rng.uniform(0.3, 2.5)
        stop_under_load(server, key, tally, after, "a", lambda: stopped.append(how(server)))
        server.start()
        run_load(server, key, tally, rng.uniform(0.0, 0.5), "b")  # life goes on after
        acked = set(tally.acked)
        wait_drained(server, sink, acked)
        clean = False not in stopped and server.terminate() == 0
        return judge(f"{name}-{seed}", server, sink, acked, clean, started), tally


def destination_case(tmp: Path, kind: str) -> CaseResult:
    """The receiver is down during the load and comes up later (`down`), or answers
    its first 300 messages with 421 (`storm`): everything arrives once, after recovery."""
    started = time.monotonic()
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    sink = Sink(tmp, "--fail-first", "300", port=port) if kind == "storm" else None
    server = Server(tmp, port)
    tally = Tally()
    try:
        key = server.make_key()
        server.start()
        run_load(server, key, tally, 1.0, "a")
        if sink is None:
            sink = Sink(tmp, port=port)
        acked = set(tally.acked)
        wait_drained(server, sink, acked)
        clean = server.terminate() == 0
        return judge(f"dest-{kind}", server, sink, acked, clean, started)
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
        if sink is not None:
            sink.stop()


def judge(
    name: str, server: Server, sink: Sink, acked: set[str], clean: bool, started: float
) -> CaseResult:
    delivered = sink.delivered()
    duplicated = sorted(s for s, n in delivered.items() if n > 1)
    ids = ids_with_seq(server.db, duplicated)
    unexplained = [s for s in duplicated if s not in ids or not lease_taken_over(server.db, ids[s])]
    return CaseResult(
        name=name,
        acked=len(acked),
        delivered=len(delivered),
        lost=sorted(acked - set(delivered)),
        duplicated=duplicated,
        unexplained_duplicates=unexplained,
        left_queued=active_count(server.db),
        clean_exit=clean,
        seconds=time.monotonic() - started,
    )


def table(results: list[CaseResult]) -> str:
    lines = [
        f"{'case':<14}{'acked':>8}{'delivered':>11}{'lost':>6}{'dup':>5}{'unexpl':>8}"
        f"{'left':>6}{'secs':>7}  result"
    ]
    for r in results:
        lines.append(
            f"{r.name:<14}{r.acked:>8}{r.delivered:>11}{len(r.lost):>6}{len(r.duplicated):>5}"
            f"{len(r.unexplained_duplicates):>8}{r.left_queued:>6}{r.seconds:>7.1f}  "
            + ("pass" if r.passed else "FAIL")
        )
    total = [
        "total",
        sum(r.acked for r in results),
        sum(r.delivered for r in results),
        sum(len(r.lost) for r in results),
        sum(len(r.duplicated) for r in results),
    ]
    passed = sum(r.passed for r in results)
    lines.append(
        f"{total[0]:<14}{total[1]:>8}{total[2]:>11}{total[3]:>6}{total[4]:>5}"
        f"  {passed}/{len(results)} cases passed"
    )
    return "\n".join(lines)


@contextlib.contextmanager
def running(tmp: Path, *sink_args: str) -> Iterator[tuple[Server, Sink, str]]:
    sink = Sink(tmp, *sink_args)
    server = Server(tmp, sink.port)
    try:
        key = server.make_key()
        server.start()
        yield server, sink, key
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
        sink.stop()
