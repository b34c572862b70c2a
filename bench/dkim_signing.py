"""DKIM signing: what it costs mailgate, against Postfix signing with OpenDKIM.

In one run:
1. signing cost per message, in process: mailgate's `dkim.sign` with both keys (RSA-2048
   and Ed25519, relaxed/relaxed) of a 2 KB and a 100 KB message, against OpenSSL's bare
   RSA-2048 PKCS#1 v1.5 sign of the same canonical header block (aim: <= 1.3x);
2. mailgate (`serve`, SQLite) with example.org a verified sending domain (its records
   served by a DNS server on loopback): HTTP single (wrk) and SMTP 2 KB (smtp-source),
   every message signed with both keys; then the same with DKIM off, for the difference;
3. Postfix relaying to smtp-sink, alone and signing with OpenDKIM as its milters
   (bench/opendkim.py: both keys), smtp-source 2 KB.
Prints msg/s, CPU per message and the ratios the issue names: HTTP single >= 5x and
SMTP 2 KB >= 3x Postfix+OpenDKIM. Needs root (Postfix, OpenDKIM).

    python bench/dkim_signing.py [--messages 20000] [--anchor-messages 3000] [--sessions 20]
        [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.delivery.peers
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from http_ingest import HTTP_PORT, ensure_wrk, run_wrk
from machine import CpuMeter, Rate, header
from opendkim import OPENDKIM_BOTH, POSTFIX, Load, run_anchor
from smtp_ingest import ensure_postfix, quiet_disk, stop, wait_ready
from smtp_load import run_smtp_source
from tests.delivery.peers import ZoneResolver, start_dns

from mailgate.domains import dkim
from mailgate.models import DkimAlgorithm

DOMAIN = "example.org"  # smtp-source's From: (bench@example.org) and the HTTP body's
MAILGATE_SMTP_PORT, READY_PORT = 2725, HTTP_PORT
TEXT = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. " * 24)[
    :1900
]
ONE = {"from": f"bench@{DOMAIN}", "to": "sink@example.com", "subject": "bench", "text": TEXT}


def message(size: int) -> bytes:
    head = (
        f"From: Bench <bench@{DOMAIN}>\r\nTo: sink@example.com\r\nSubject: bench\r\n"
        "Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    return head + line * ((size - len(head)) // len(line) + 1)


def paired(fns: list[Callable[[], object]], n: int, rounds: int = 5) -> list[float]:
    """Seconds per call of each fn: the fns are called in turn, call by call, n times a
    round (so a busy moment of this shared machine costs them alike), and each fn's
    time is the median over the rounds."""
    per_round: list[list[float]] = [[] for _ in fns]
    clock = time.perf_counter
    for _ in range(rounds):
        totals = [0.0] * len(fns)
        for _ in range(n):
            for i, fn in enumerate(fns):
                started = clock()
                fn()
                totals[i] += clock() - started
        for i, total in enumerate(totals):
            per_round[i].append(total / n)
    return [statistics.median(times) for times in per_round]


def signing_cost() -> float:
    """Print mailgate's sign (both keys) against OpenSSL's bare RSA sign; the 2 KB ratio."""
    rsa_key = rsa.generate_private_key(65537, 2048)
    signers = [
        dkim.Signer(DOMAIN, "r", DkimAlgorithm.RSA, rsa_key),
        dkim.Signer(DOMAIN, "e", DkimAlgorithm.ED25519, ed25519.Ed25519PrivateKey.generate()),
    ]
    small, large = message(2048), message(102400)
    fields, _ = dkim.split(small)
    block = b"".join(dkim.relaxed_header(f) for f in dkim.signed_fields(fields)[1])
    ratios = {}
    for size, raw in ((2, small), (100, large)):  # a pair each: 100 KB's buffers evict
        bare, cost = paired(  # the caches, which a 2 KB message does not do to itself
            [
                lambda: rsa_key.sign(block, padding.PKCS1v15(), hashes.SHA256()),
                lambda raw=raw: dkim.sign(raw, signers, 1_700_000_000),
            ],
            400,
        )
        ratios[size] = cost / bare
        print(
            f"mailgate sign {size:3d} KB: {cost * 1e6:7.0f} µs  both keys (RSA-2048 + Ed25519,"
            f" relaxed/relaxed) = {cost / bare:.2f}x a bare RSA-2048 sign ({bare * 1e6:.0f} µs,"
            " PKCS#1 v1.5, SHA-256; called in turns, median of 5)"
        )
    return ratios[2]


def start_mailgate(
    tmp: Path, dns_port: int, zone: ZoneResolver, signing: bool
) -> tuple[subprocess.Popen[bytes], str]:
    """serve on SQLite without delivery (what an acknowledgement costs); with signing,
    example.org added, its records published in the loopback DNS and verified first."""
    env = dict(os.environ)
    env.update(
        {
            "MAILGATE_SERVER_DATA_DIR": str(tmp / "mailgate"),
            "MAILGATE_SMTP_PORT": str(MAILGATE_SMTP_PORT),
            "MAILGATE_SMTP_MAX_CONNECTIONS_PER_IP": "1000",
            "MAILGATE_SMTP_DEDUPE_WINDOW": "0",
            "MAILGATE_HTTP_PORT": str(READY_PORT),
            "MAILGATE_SERVER_LOG_LEVEL": "warning",
            "MAILGATE_DELIVERY_ENABLED": "false",
            "MAILGATE_DELIVERY_RESOLVER": f"127.0.0.1:{dns_port}",
        }
    )

    def cli(*args: str) -> str:
        cmd = [sys.executable, "-m", "mailgate.cli", *args]
        return subprocess.run(
            cmd, env=env, cwd=tmp, capture_output=True, text=True, check=True
        ).stdout

    key = cli("keys", "create", "--name", "bench", "--scope", "send,read").strip().splitlines()[-1]
    if signing:
        added = json.loads(cli("domains", "add", DOMAIN, "--json"))
        for r in added["records"]:
            if r["purpose"] == "dkim":
                zone.add(r["name"], "TXT", r["value"])
        verified = json.loads(cli("domains", "verify", DOMAIN, "--json"))
        assert verified["sending"], verified
    proc = subprocess.Popen([sys.executable, "-m", "mailgate.cli", "serve"], env=env, cwd=tmp)
    wait_ready(READY_PORT)
    return proc, key


def smtp_rate(port: int, messages: int, sessions: int) -> Rate:
    quiet_disk()
    meter = CpuMeter()
    run = run_smtp_source(port, messages, sessions, 2048)
    return Rate(run.rate, meter.stop(messages))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument(
        "--anchor-messages",
        type=int,
        default=3000,
        help="messages per Postfix run (with OpenDKIM it takes ~140 msg/s here)",
    )
    args = p.parse_args()
    ensure_wrk()
    ensure_postfix()
    header(args.sessions, max(args.messages, 10_000))
    sign_ratio = signing_cost()
    dns, zone, dns_port = start_dns()
    http: dict[bool, float] = {}
    smtp: dict[bool, Rate] = {}
    try:
        for signing in (True, False):
            tmp = Path(tempfile.mkdtemp(prefix="mailgate-dkim-"))
            mg, key = start_mailgate(tmp, dns_port, zone, signing)
            label = "DKIM on " if signing else "DKIM off"
            try:
                n, rate, _, p99, errors, cpu = run_wrk(
                    tmp, key, "/v1/messages", json.dumps(ONE), args.seconds, args.connections, 1
                )
                http[signing] = rate
                print(
                    f"mailgate {label} HTTP single: {rate:7,.0f} msg/s  p99 {p99:5.1f} ms"
                    f" ({n:,} requests, {errors} errors)  {cpu.describe()}",
                    flush=True,
                )
                smtp[signing] = smtp_rate(MAILGATE_SMTP_PORT, args.messages, args.sessions)
                print(
                    f"mailgate {label} SMTP 2 KB  : {smtp[signing].rate:7,.0f} msg/s  "
                    f"{smtp[signing].cpu.describe()}",
                    flush=True,
                )
                if signing:
                    check_signed(key)
            finally:
                stop(mg)
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        dns.stop()
        dns.server.server_close()
    postfix, opendkim = postfix_rates(args.anchor_messages, args.sessions)
    print(
        f"ratio: HTTP single {http[True] / opendkim:.1f}x Postfix+OpenDKIM (target >= 5x), "
        f"SMTP 2 KB {smtp[True].rate / opendkim:.1f}x (target >= 3x); signing "
        f"{sign_ratio:.2f}x bare RSA (aim <= 1.3x); DKIM on/off: HTTP "
        f"{http[True] / http[False]:.2f}, SMTP {smtp[True].rate / smtp[False].rate:.2f}; "
        f"Postfix+OpenDKIM / Postfix {opendkim / postfix:.2f}"
    )


def check_signed(key: str) -> None:
    """The bench measured signed mail: the newest stored message has both signatures."""
    auth = {"Authorization": f"Bearer {key}"}
    base = f"http://127.0.0.1:{READY_PORT}/v1/messages"
    with urllib.request.urlopen(urllib.request.Request(f"{base}?limit=1", headers=auth)) as r:
        newest = json.load(r)["data"][0]["id"]
    with urllib.request.urlopen(urllib.request.Request(f"{base}/{newest}/raw", headers=auth)) as r:
        raw = r.read()
    algorithms = sorted(
        t.split(b"=")[1].decode()
        for t in raw.split(b";")
        if t.strip().startswith(b"a=") and b"sha256" in t
    )
    assert algorithms == ["ed25519-sha256", "rsa-sha256"], raw[:800]
    print(f"  checked: the newest message carries {', '.join(algorithms)} signatures", flush=True)


def postfix_rates(messages: int, sessions: int) -> tuple[float, float]:
    """Postfix alone and Postfix + OpenDKIM (both keys): smtp-source's msg/s, 2 KB."""
    runs, verified = run_anchor(Load(messages, sessions, 2048), domain=DOMAIN)
    assert verified, "OpenDKIM's signatures did not verify: the anchor is not signing"
    for name in (POSTFIX, OPENDKIM_BOTH):
        print(f"{name:31s}: {runs[name].describe(runs[POSTFIX] if name != POSTFIX else None)}")
    return runs[POSTFIX].accepted.rate, runs[OPENDKIM_BOTH].accepted.rate


if __name__ == "__main__":
    main()
