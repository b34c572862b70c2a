"""The vendor surfaces' cost (issue 18): each vendor's single send (Resend, Postmark,
SendGrid, Mailgun, as its SDK sends it) against mailgate's own `POST /v1/messages`, the
same 2 KB message, wrk at 50 connections, delivery off. Each vendor's run sits between
two native runs (native, resend, native, postmark, native, ...) and is set against their
mean, so neither the machine's drift nor the store growing run after run falls on one
side. Target: each vendor >= 0.9x native. Beside each rate: the server's CPU per message
and the idle share.

    python bench/vendors.py [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_ingest import ONE, ensure_wrk, run_wrk, start_mailgate
from machine import header
from smtp_ingest import stop

SENDER, TO, SUBJECT, TEXT = ONE["from"], ONE["to"], ONE["subject"], ONE["text"]
JSON = "application/json"


def routes(key: str) -> dict[str, tuple[str, str, dict[str, str]]]:
    """name -> (path, body, headers): one message as each SDK sends it."""
    bearer = {"Content-Type": JSON, "Authorization": f"Bearer {key}"}
    basic = base64.b64encode(f"api:{key}".encode()).decode()
    return {
        "native": ("/v1/messages", json.dumps(ONE), bearer),
        "resend": (
            "/emails",
            json.dumps({"from": SENDER, "to": [TO], "subject": SUBJECT, "text": TEXT}),
            bearer,
        ),
        "postmark": (
            "/email",
            json.dumps(
                {
                    "From": SENDER,
                    "To": TO,
                    "Cc": None,
                    "Bcc": None,
                    "Subject": SUBJECT,
                    "TextBody": TEXT,
                    "Headers": [],
                    "Attachments": [],
                    "TrackLinks": "None",
                    "MessageStream": "outbound",
                }
            ),
            {"Content-Type": JSON, "X-Postmark-Server-Token": key, "Accept": JSON},
        ),
        "sendgrid": (
            "/v3/mail/send",
            json.dumps(
                {
                    "personalizations": [{"to": [{"email": TO}]}],
                    "from": {"email": SENDER},
                    "subject": SUBJECT,
                    "content": [{"type": "text/plain", "value": TEXT}],
                }
            ),
            bearer,
        ),
        "mailgun": (
            f"/v3/{SENDER.split('@')[1]}/messages",
            urlencode({"from": SENDER, "to": TO, "subject": SUBJECT, "text": TEXT}),
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": f"Basic {basic}",
            },
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    ensure_wrk()
    header(20, 20_000)
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-vendors-"))
    ratios: dict[str, list[float]] = {}
    proc, key = start_mailgate(tmp)
    try:
        table = routes(key)
        vendors = [n for n in table if n != "native"]

        def measure(r: int, name: str) -> float:
            path, body, headers = table[name]
            _, rate, p50, p99, errors, cpu = run_wrk(
                tmp, key, path, body, args.seconds, 50, 1, headers=headers
            )
            if errors:
                print(f"{name}: {errors} errors (not 2xx): check the route", flush=True)
            print(
                f"round {r + 1} {name:9} {rate:8,.0f} messages/s  p50 {p50:5.1f} ms"
                f"  p99 {p99:5.1f} ms  {cpu.describe()}",
                flush=True,
            )
            return rate

        for r in range(args.rounds):
            before = measure(r, "native")
            for name in vendors:
                rate = measure(r, name)
                after = measure(r, "native")
                ratios.setdefault(name, []).append(rate / ((before + after) / 2))
                before = after
    finally:
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    for name, got in ratios.items():
        ratio = sum(got) / len(got)
        each = ", ".join(f"{g:.2f}" for g in got)
        verdict = "ok" if ratio >= 0.9 else "BELOW"
        print(f"{name:9} {ratio:.2f}x native (rounds: {each}; target >= 0.9x) {verdict}")


if __name__ == "__main__":
    main()
