"""Connected mailboxes: the initial sync of a big mailbox, and how soon new mail shows up.

A real Dovecot on loopback (tests/mailboxes/dovecot.py, plain IMAP) with one mailbox of
`--messages` (default 10,000) 2 KB messages in INBOX, written straight into its Maildir
(fast; Dovecot indexes them once before either tool is timed), some of them replies so
threads are made. Then, in the same run:

- mbsync (isync, the C sync tool) pulls INBOX to an empty local Maildir: its rate;
- mailgate's initial sync of the same mailbox into an empty SQLite store
  (`Mailboxes.sync_now`: every folder listed, every message fetched whole, parsed with the
  `email` package, threaded, stored): its rate, and the ratio (target >= 1x mbsync);
- new-mail latency: with the sync component running (IDLE on INBOX), `--appends`
  (default 200) APPENDs by another client one after another; for each, the time from
  the APPEND's start to the message being in the store, and to its `message.created`
  event being in the outbox, and to that event's webhook reaching a receiver on
  loopback (mailgate's webhook sender, as `serve` runs it): p50 / p99 (target p99 <= 2 s).

Run it alone (`--lock /tmp/mailgate-bench.lock` waits for benches taking that lock).

    python bench/mailbox_sync.py [--messages 10000] [--appends 200] [--lock PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from machine import header  # noqa: E402
from tests.events.receiver import Receiver, receiver  # noqa: E402
from tests.mailboxes.conftest import Box, add_grant, wired  # noqa: E402
from tests.mailboxes.dovecot import Dovecot, message, running_dovecot  # noqa: E402

from mailgate.config import WebhooksConfig  # noqa: E402
from mailgate.events.endpoints import WebhookAdmin  # noqa: E402
from mailgate.events.webhooks import WebhookSender  # noqa: E402
from mailgate.mailboxes.models import MessageFilter  # noqa: E402
from mailgate.mailboxes.runner import MailboxSync  # noqa: E402
from mailgate.models import ApiKey, EventKind, Scope  # noqa: E402
from mailgate.resolver import make_resolver  # noqa: E402

FILLER = ("The quick brown fox jumps over the lazy dog. " * 40)[:1800]


def fill(server: Dovecot, user: str, count: int) -> float:
    """Write `count` messages into the user's INBOX Maildir (cur/, seen or not), then let
    Dovecot index them (one SELECT): neither tool pays for that."""
    c = server.client(user)  # the first login makes the Maildir and its folders
    c.select_folder("INBOX")
    c.logout()
    cur = server.maildir(user) / "cur"
    started = time.perf_counter()
    now = int(time.time())
    for i in range(count):
        reply = f"<b{i - 1}@bench.example>" if i % 5 and i else None
        raw = message(
            f"Bench message {i}",
            message_id=f"<b{i}@bench.example>",
            in_reply_to=reply,
            references=reply,
            date=time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(now - count + i)),
            body=FILLER,
        )
        flags = "S" if i % 3 else ""
        path = cur / f"{now - count + i}.M{i}P1.bench,S={len(raw)}:2,{flags}"
        path.write_bytes(raw)
        os.utime(path, (now - count + i, now - count + i))
    for path in (cur, *cur.iterdir()):
        shutil.chown(path, "dovecot", "dovecot")
    c = server.client(user)
    c.select_folder("INBOX", readonly=True)
    c.logout()
    return time.perf_counter() - started


def run_mbsync(server: Dovecot, user: str, tmp: Path) -> float:
    """Seconds for mbsync to pull INBOX into an empty Maildir."""
    local = tmp / "mbsync-maildir"
    local.mkdir()
    conf = tmp / "mbsyncrc"
    conf.write_text(
        f"""IMAPAccount bench
Host {server.host}
Port {server.imap_port}
User {user}
Pass {server.users[user]}
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account bench

MaildirStore local
Path {local}/
Inbox {local}/INBOX

Channel bench
Far :remote:
Near :local:
Patterns INBOX
Create Near
Sync Pull
SyncState *
"""
    )
    started = time.perf_counter()
    done = subprocess.run(
        ["mbsync", "-q", "-c", str(conf), "bench"], capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"mbsync failed: {done.stderr}")
    got = len(list((local / "INBOX" / "cur").iterdir())) + len(
        list((local / "INBOX" / "new").iterdir())
    )
    print(f"mbsync: {got:,} messages pulled", flush=True)
    return took


async def latencies(
    b: Box, server: Dovecot, user: str, runner: MailboxSync, got: Receiver, appends: int
) -> tuple[list[float], list[float], list[float]]:
    """APPEND one message at a time; the seconds to each of the three points."""
    while (await b.refresh()).synced_at is None or b.grant.id not in runner.watches:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the watch has synced INBOX and entered IDLE
    other = server.client(user)
    to_store: list[float] = []
    to_event: list[float] = []
    to_hook: list[float] = []
    cursor = (await b.store.events_since(None, 100_000))[1]
    for i in range(appends):
        subject = f"Latency {i}"
        raw = message(subject, message_id=f"<lat{i}@bench.example>")
        hooks_before = len(got.got)
        t0 = time.perf_counter()
        await asyncio.to_thread(other.append, "INBOX", raw)
        stored_at = event_at = hook_at = None
        while stored_at is None or event_at is None or hook_at is None:
            if stored_at is None:
                page, _ = await b.mailboxes.messages(
                    b.grant, MessageFilter(subject=subject, limit=1)
                )
                if page:
                    stored_at = time.perf_counter()
            if event_at is None:
                events, cursor = await b.store.events_since(cursor, 100)
                if any(e.kind is EventKind.MAILBOX_CREATED for e in events):
                    event_at = time.perf_counter()
            if hook_at is None and len(got.got) > hooks_before:
                hook_at = time.perf_counter()
            if time.perf_counter() - t0 > 30:
                raise SystemExit(f"append {i} not through within 30 s")
            await asyncio.sleep(0.002)
        to_store.append(stored_at - t0)
        to_event.append(event_at - t0)
        to_hook.append(hook_at - t0)
    other.logout()
    return to_store, to_event, to_hook


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def mailgate_runs(server: Dovecot, user: str, tmp: Path, appends: int) -> float:
    """mailgate's initial sync (its seconds, returned), then the new-mail latency."""
    async with wired(
        server, f"sqlite:///{tmp / 'mailgate.db'}", tmp, initial_sync_days=3650, poll_interval=30
    ) as b:
        # the user of the mailbox filled above, not the one `wired` took
        b.grant = await add_grant(b.store, b.mailboxes.box, server, user)
        b.user = user
        started = time.perf_counter()
        counts = await b.mailboxes.sync_now(b.grant)
        took = time.perf_counter() - started
        stored = sum(f.total for f in await b.mailboxes.folders(b.grant))
        print(
            f"mailgate initial sync: {stored:,} messages in {took:.2f} s"
            f" = {stored / took:,.0f} msg/s ({counts.created:,} created)",
            flush=True,
        )

        # new-mail latency with the component running (IDLE on INBOX), and the webhook
        # sender posting message.created to a receiver on loopback
        hooks_cfg = WebhooksConfig(allow_http=True, allow_private_networks=["127.0.0.0/8"])
        admin = WebhookAdmin(b.store, b.mailboxes.box, hooks_cfg, make_resolver("", 1))
        owner = ApiKey("key1", "bench", frozenset({Scope.SEND, Scope.READ}), (), 0.0, None)
        runner = MailboxSync(b.mailboxes)
        sender = WebhookSender(b.store, admin, hooks_cfg)
        with receiver() as got:
            await admin.create(owner, got.url("/hook"), ["message.created"], "")
            await runner.start()
            await sender.start()
            try:
                lat = await latencies(b, server, user, runner, got, appends)
            finally:
                await sender.stop(1.0)
                await runner.stop()
        for name, values in zip(
            ("stored", "message.created in the outbox", "message.created webhook received"),
            lat,
            strict=True,
        ):
            print(
                f"new-mail latency, APPEND -> {name}: p50 {statistics.median(values) * 1000:.0f} ms"
                f"  p99 {pct(values, 99) * 1000:.0f} ms  max {max(values) * 1000:.0f} ms"
                f"  ({len(values)} appends; target p99 <= 2000 ms)",
                flush=True,
            )
        return took


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--appends", type=int, default=200)
    p.add_argument(
        "--lock", type=Path, help="take this flock first (benches sharing a machine wait on it)"
    )
    args = p.parse_args()
    if args.lock is not None:
        held = args.lock.open("a")  # held until the process ends
        fcntl.flock(held, fcntl.LOCK_EX)
    header(None)
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-mbox-"))
    try:
        with running_dovecot() as server:
            user = server.take_user()
            took = fill(server, user, args.messages)
            print(f"filled {args.messages:,} messages (Maildir + Dovecot index) in {took:.1f} s")
            mb = run_mbsync(server, user, tmp)
            print(
                f"mbsync initial sync: {args.messages:,} messages in {mb:.2f} s"
                f" = {args.messages / mb:,.0f} msg/s",
                flush=True,
            )
            mine = asyncio.run(mailgate_runs(server, user, tmp, args.appends))
            print(
                f"mailgate / mbsync initial sync rate: {mb / mine:.2f}x (target >= 1x)",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
