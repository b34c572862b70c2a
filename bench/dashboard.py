"""The dashboard with a big store: server time of the messages list (first page, and
searches by recipient, sender, tag, status and subject) and of one message's page, with
`--messages` (default 1,000,000) stored; p50 / p99 over `--requests` requests each
(target: <= 200 ms). Server time is the dashboard's own `Server-Timing` figure (request
in to page rendered); the client's round trip is printed beside it.

The store is filled with bulk SQL inserts straight into a stopped server's SQLite
database (as bench/suppressions.py fills its table): messages over the last 30 days, one
or two recipients each (mostly delivered, some deferred, bounced, queued), their events,
a tag on one in five; bodies in one segment file that every row points into, as the
server keeps bodies of 512 bytes and more.

    python bench/dashboard.py [--messages 1000000] [--requests 50]
        [--lock /tmp/mailgate-bench.lock]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from machine import header
from smtp_ingest import stop, wait_ready

from mailgate.models import new_id

PORT = 8726
MAILGATE = (sys.executable, "-m", "mailgate.cli")
DAYS = 30
SENDERS = [f"app{i}@shop{i % 7}.example" for i in range(50)]
TAGS = [f"campaign-{i}" for i in range(10)]
DOMAINS = [f"inbox{i}.example" for i in range(200)]
ADDRESSES = 100_000  # distinct recipients
SUBJECTS = ("Your order {n} has shipped", "Welcome, {n}", "Invoice {n}", "Password reset {n}")
STATUSES = (("delivered", 0.94), ("deferred", 0.02), ("bounced", 0.02), ("queued", 0.02))
BODY = (
    "From: app@shop.example\r\nTo: someone@inbox.example\r\nSubject: Bench\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    + "<p>Hello, this is the body of a bench message.</p>\r\n"
    * 40
).encode()


def status_of(rng: random.Random) -> str:
    x, total = rng.random(), 0.0
    for status, share in STATUSES:
        total += share
        if x < total:
            return status
    return "delivered"


def fill(db: Path, count: int, key_id: str) -> float:
    """`count` messages with their recipients, events and tags straight into the
    (stopped) server's database; seconds."""
    started = time.perf_counter()
    bodies = db.with_name(db.name + ".bodies")
    bodies.mkdir(exist_ok=True)
    segment = f"{new_id()}.seg"
    (bodies / segment).write_bytes(BODY)
    rng = random.Random(19)
    now = time.time()
    first = now - DAYS * 86400
    step = (now - first) / count
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")  # 256 MiB: the indexes stay in memory
    batch = 50_000
    for start in range(0, count, batch):
        messages, recipients, events, tags = [], [], [], []
        for i in range(start, min(start + batch, count)):
            at = first + i * step
            mid = new_id(at)
            tag = [TAGS[(i // 5) % len(TAGS)]] if i % 5 == 0 else []
            subject = SUBJECTS[i % len(SUBJECTS)].format(n=i)
            messages.append(
                (
                    mid,
                    at,
                    SENDERS[i % len(SENDERS)],
                    "http",
                    key_id,
                    json.dumps(tag),
                    f"<{mid}@bench.example>",
                    subject,
                    len(BODY),
                    segment,
                )
            )
            tags.extend((t, mid) for t in tag)
            events.append((mid, None, "accepted", at, "{}", key_id))
            for _ in range(1 + (i % 4 == 0)):
                address = f"user{rng.randrange(ADDRESSES)}@{DOMAINS[rng.randrange(len(DOMAINS))]}"
                status = status_of(rng)
                recipients.append((mid, address, address.rpartition("@")[2], status, at))
        conn.executemany(
            "INSERT INTO messages (id, created_at, sender, source, api_key_id, tags, metadata,"
            " message_id_header, subject, scheduled_at, size, raw, body_file, body_offset)"
            " VALUES (?, ?, ?, ?, ?, ?, '{}', ?, ?, NULL, ?, x'', ?, 0)",
            messages,
        )
        conn.executemany("INSERT INTO message_tags (tag, message_id) VALUES (?, ?)", tags)
        for mid, address, domain, status, at in recipients:
            active = status in ("queued", "deferred")
            code = {"delivered": 250, "deferred": 451, "bounced": 550}.get(status)
            text = {250: "2.0.0 Queued", 451: "4.3.0 Try later", 550: "5.1.1 No such user"}
            cur = conn.execute(
                "INSERT INTO recipients (message_id, address, domain, status, attempts,"
                " next_attempt_at, last_code, last_text, remote_host, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    mid,
                    address,
                    domain,
                    status,
                    0 if status == "queued" else 1,
                    now + 3600 if active else None,
                    code,
                    text.get(code) if code else None,
                    f"mx.{domain}" if code else None,
                    at + 2,
                ),
            )
            if code:
                events.append((mid, cur.lastrowid, status, at + 2, "{}", key_id))
        conn.executemany(
            "INSERT INTO events (message_id, recipient_id, kind, at, details, api_key_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            events,
        )
        conn.commit()
    conn.close()
    return time.perf_counter() - started


def serve_env(tmp: Path) -> dict[str, str]:
    return dict(
        os.environ,
        MAILGATE_SERVER_DATA_DIR=str(tmp / "mailgate"),
        MAILGATE_SMTP_ENABLED="false",
        MAILGATE_DELIVERY_ENABLED="false",  # nothing moves while pages are read
        MAILGATE_HTTP_PORT=str(PORT),
        MAILGATE_SERVER_LOG_LEVEL="warning",
    )


def admin_key(tmp: Path) -> str:
    """An admin key made by the CLI, which creates the database and its schema first."""
    made = subprocess.run(
        [*MAILGATE, "keys", "create", "--name", "bench", "--scope", "admin"],
        env=serve_env(tmp),
        cwd=tmp,
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


def sign_in(client: httpx.Client, key: str) -> None:
    form = client.get("/ui/signin")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token, form.text
    answer = client.post("/ui/signin", data={"key": key, "csrf": token.group(1)})
    assert answer.status_code == 303, answer.text


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure(client: httpx.Client, name: str, paths: list[str]) -> float:
    """GET each path; print p50 / p99 of the server's time and the client's; the p99."""
    server, total = [], []
    for path in paths:
        started = time.perf_counter()
        answer = client.get(path)
        total.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        timing = re.search(r"dur=([0-9.]+)", answer.headers["server-timing"])
        assert timing, answer.headers
        server.append(float(timing.group(1)))
    p99 = percentile(server, 99)
    print(
        f"  {name:34} server p50 {percentile(server, 50):6.1f} ms  p99 {p99:6.1f} ms"
        f"   (round trip p50 {percentile(total, 50):6.1f}, p99 {percentile(total, 99):6.1f})",
        flush=True,
    )
    return p99


def samples(db: Path, n: int) -> dict[str, list[str]]:
    """Ids, addresses and a deep cursor to ask for, picked from the filled database."""
    conn = sqlite3.connect(db)
    rng = random.Random(7)
    top = conn.execute("SELECT max(id) FROM recipients").fetchone()[0]
    picks = [rng.randrange(1, top) for _ in range(n)]
    rows = [
        conn.execute("SELECT message_id, address FROM recipients WHERE id = ?", (i,)).fetchone()
        for i in picks
    ]
    count = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    middle = conn.execute(
        "SELECT id FROM messages ORDER BY id DESC LIMIT 1 OFFSET ?", (count // 2,)
    ).fetchone()[0]
    route = conn.execute(
        "SELECT domain FROM recipients WHERE status = 'deferred' LIMIT 1"
    ).fetchone()[0]
    conn.close()
    return {
        "ids": [r[0] for r in rows],
        "addresses": [r[1] for r in rows],
        "middle": [middle],
        "route": [route],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument(
        "--lock", type=Path, help="take this flock first (benches sharing a machine wait on it)"
    )
    args = p.parse_args()
    if args.lock is not None:
        held = args.lock.open("a")  # held until the process ends
        fcntl.flock(held, fcntl.LOCK_EX)
    header(None)
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-dash-"))
    proc = None
    try:
        key = admin_key(tmp)
        db = tmp / "mailgate" / "mailgate.db"
        took = fill(db, args.messages, key.split("_")[1])
        print(f"filled {args.messages:,} messages in {took:.0f} s", flush=True)
        picked = samples(db, args.requests)
        proc = subprocess.Popen([*MAILGATE, "serve"], env=serve_env(tmp), cwd=tmp)
        wait_ready(PORT, timeout=300)
        n = args.requests
        base = f"http://127.0.0.1:{PORT}"
        with httpx.Client(base_url=base, timeout=60) as client:
            sign_in(client, key)
            for _ in range(5):  # warm: templates compiled, pages in the OS cache
                client.get("/ui/messages")
            worst = max(
                measure(client, "messages, first page", ["/ui/messages"] * n),
                measure(
                    client,
                    "messages, a page halfway back",
                    [f"/ui/messages?cursor={picked['middle'][0]}"] * n,
                ),
                measure(
                    client,
                    "search by recipient",
                    [f"/ui/messages?recipient={a}" for a in picked["addresses"]],
                ),
                measure(
                    client,
                    "search by sender",
                    [f"/ui/messages?sender={SENDERS[i % len(SENDERS)]}" for i in range(n)],
                ),
                measure(
                    client, "search by tag", [f"/ui/messages?tag={TAGS[i % 10]}" for i in range(n)]
                ),
                measure(
                    client, "search by status (deferred)", ["/ui/messages?status=deferred"] * n
                ),
                measure(
                    client,
                    "search: a subject found nowhere",
                    ["/ui/messages?subject=nowhere+to+be+found"] * n,
                ),
                measure(client, "one message", [f"/ui/messages/{i}" for i in picked["ids"]]),
                measure(client, "queue, one route", [f"/ui/queue?route={picked['route'][0]}"] * n),
                # the first look counts the week's finished hours, later ones only the
                # current hour and the last hour's 5-minute buckets
                measure(client, "overview, first look (cold)", ["/ui/overview"]),
                measure(client, "overview", ["/ui/overview"] * n),
                measure(client, "suppressions", ["/ui/suppressions"] * n),
            )
        verdict = "within" if worst <= 200 else "OVER"
        print(f"worst p99 {worst:.1f} ms: {verdict} the 200 ms target", flush=True)
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
