"""DKIM anchor: Postfix signing with OpenDKIM as its milter, against Postfix alone.

The setup every Postfix operator uses to sign mail, so a DKIM bench can put mailgate's
DKIM-signing ingest beside it in the same run. Postfix is the durable loopback relay of
scripts/postfix-relay, relaying to smtp-sink; OpenDKIM (scripts/postfix-opendkim) signs
every message whose From: is in --domain with rsa-sha256 (2048 bits) and ed25519-sha256,
relaxed/relaxed, From oversigned. Debian 12's OpenDKIM takes the signing algorithm from
one global setting, so the two signatures come from two daemons, one milter each, that
Postfix calls in turn; a third run has the RSA one alone (the common single signature).

Before the measured runs, two messages go through the double-signing Postfix into an
smtp-sink that dumps them; both DKIM-Signature headers must verify with dkimpy against
the TXT records the script printed (a dnsfunc, no DNS). Then smtp-source sends --messages
to each setup, from user@DOMAIN (smtp-source writes its -f address into the From:
header, which is what OpenDKIM's SigningTable matches), and each run waits until the sink
has every message before the next starts. Prints msg/s as smtp-source saw it (each 250
comes after the milters signed), delivered msg/s (to the last message at the sink), the
machine's CPU per message less smtp-source's and smtp-sink's (OpenDKIM's is counted: it
is part of the server), each daemon's own CPU per message, and the ratios to Postfix alone.

Compare at the same --sessions: with OpenDKIM each message waits on two ~40 ms stalls on
the milter's loopback TCP (a small write held by Nagle until the peer's delayed ACK: the
DATA macros then the first header from Postfix, the inserted header then "accept" from
libmilter), so at 20 sessions the milter rows are bound by latency (the machine partly
idle) and rise with more sessions until OpenDKIM's CPU (~2 ms per message per daemon on
the 2-core machine this was written on, most of it not the signature) binds them.

Postfix is shared with test runs: everything that configures, starts, stops or sends to
it holds an exclusive flock on /tmp/mailgate-postfix.lock. Postfix and OpenDKIM are left
stopped, and the milter settings are removed from main.cf (a later plain `postfix start`
would otherwise tempfail every message to a milter that is gone). Needs root.

    python bench/opendkim.py [--messages 5000] [--sessions 20] [--size 2048]
        [--domain bench.test] [--keydir /var/lib/mailgate-bench/opendkim]
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import importlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import CpuMeter, Rate, header, process_cpu
from smtp_ingest import ensure_postfix, quiet_disk, start_postfix
from smtp_load import (
    SMTP_SINK,
    run_smtp_source,
    start_sink,
    stop_sink,
    wait_delivered,
    wait_port,
)

ROOT = Path(__file__).resolve().parents[1]
POSTFIX_RELAY = ROOT / "scripts" / "postfix-relay"
POSTFIX_OPENDKIM = ROOT / "scripts" / "postfix-opendkim"
POSTFIX_LOCK = Path("/tmp/mailgate-postfix.lock")  # shared with the test runs' Postfix
# not under /tmp: OpenDKIM refuses keys below a directory others may write to
KEYDIR = Path("/var/lib/mailgate-bench/opendkim")
POSTFIX_PORT, SINK_PORT, CAPTURE_PORT = 2655, 2656, 2657
MILTER_PORT = 8891  # OpenDKIM's customary port; the Ed25519 daemon takes the next one
SELECTORS = ("rsa", "ed25519")  # the order of scripts/postfix-opendkim's daemons and ports


@dataclass(frozen=True)
class OpenDkim:
    """Two running OpenDKIM daemons signing for `domain`, one per selector (and algorithm),
    on 127.0.0.1:port and port + 1."""

    domain: str
    port: int
    pids: tuple[int, int]
    selectors: tuple[str, str]
    txt: tuple[str, str]  # the DNS TXT value to publish at <selector>._domainkey.<domain>
    private_keys: tuple[Path, Path]  # PEM (PKCS#8), owned by the opendkim user

    def dns(self) -> dict[bytes, bytes]:
        """TXT records by name as dkimpy asks for them ("<s>._domainkey.<d>.")."""
        return {
            f"{s}._domainkey.{self.domain}.".encode(): t.encode()
            for s, t in zip(self.selectors, self.txt, strict=True)
        }


def start_opendkim(domain: str, keydir: Path, port: int) -> OpenDkim:
    """scripts/postfix-opendkim: keys made in `keydir` if absent, both daemons (re)started
    and listening; their pids and the TXT records it printed."""
    out = subprocess.run(
        ["bash", str(POSTFIX_OPENDKIM), domain, str(keydir), str(port)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    records = dict(line.split(" ", 1) for line in out.splitlines() if "._domainkey." in line)
    pids = [int((keydir / f"opendkim-{s}.pid").read_text()) for s in SELECTORS]
    return OpenDkim(
        domain=domain,
        port=port,
        pids=(pids[0], pids[1]),
        selectors=SELECTORS,
        txt=(
            records[f"{SELECTORS[0]}._domainkey.{domain}"],
            records[f"{SELECTORS[1]}._domainkey.{domain}"],
        ),
        private_keys=(keydir / f"{SELECTORS[0]}.private", keydir / f"{SELECTORS[1]}.private"),
    )


def _alive(pid: int) -> bool:
    """Whether `pid` is a live opendkim: a daemon is not our child, so it is reaped by init
    (a zombie until then), and a pid reused by another program must not be signalled."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return "(opendkim)" in stat and stat[stat.rindex(")") + 2] != "Z"


def stop_opendkim(od: OpenDkim, timeout: float = 30) -> None:
    """SIGTERM both daemons and wait until they are gone: OpenDKIM took over a second to
    exit here, and one started before then finds its port taken (and, forked already,
    dies without a word)."""
    for pid in od.pids:
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in od.pids):
        if time.monotonic() > deadline:
            for pid in od.pids:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)


def start_postfix_with_opendkim(
    port: int, relay_port: int, milter_port: int, *, ed25519: bool = True
) -> None:
    """Postfix as the durable loopback relay of scripts/postfix-relay with OpenDKIM's milters
    in front of its queue (rsa on milter_port, then ed25519 on milter_port + 1 unless
    `ed25519` is off), empty queue. milter_protocol stays Postfix's default 6, which
    OpenDKIM's libmilter speaks; a milter that cannot answer makes Postfix say 451
    (tempfail) rather than pass mail unsigned. non_smtpd_milters signs sendmail/pickup
    mail too, as operators set it. The caller holds POSTFIX_LOCK."""
    ports = (milter_port, milter_port + 1) if ed25519 else (milter_port,)
    milters = ", ".join(f"inet:127.0.0.1:{p}" for p in ports)
    subprocess.run(
        [
            "bash",
            str(POSTFIX_RELAY),
            str(port),
            f"127.0.0.1:{relay_port}",
            f"smtpd_milters={milters}",
            f"non_smtpd_milters={milters}",
            "milter_default_action=tempfail",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(["postsuper", "-d", "ALL"], check=False, capture_output=True)
    wait_port(port)


def stop_postfix() -> None:
    """Postfix stopped and main.cf without the milters (the caller holds POSTFIX_LOCK)."""
    subprocess.run(["postfix", "stop"], check=False, capture_output=True)
    subprocess.run(
        ["postconf", "-X", "smtpd_milters", "non_smtpd_milters", "milter_default_action"],
        check=False,
        capture_output=True,
    )


@contextmanager
def postfix_lock() -> Iterator[None]:
    """The exclusive lock every user of the system Postfix takes (tests and benches)."""
    with POSTFIX_LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def send(port: int, messages: int, sessions: int, size: int, sender: str) -> tuple[float, float]:
    """smtp-source from `sender` (the From: header OpenDKIM's SigningTable matches); the
    start (monotonic) and the seconds until every message was answered."""
    started = time.monotonic()
    run = run_smtp_source(port, messages, sessions, size, sender)
    return started, run.seconds


# --- verification -------------------------------------------------------------------


def _nacl_on_cryptography() -> SimpleNamespace:
    """dkimpy verifies Ed25519 through PyNaCl, which mailgate does not depend on: the two
    calls it makes (VerifyKey(p, encoder=Base64Encoder).verify(digest, sig)) on
    `cryptography`, which it does."""

    class BadSignatureError(Exception):
        pass

    class VerifyKey:
        def __init__(self, key: bytes, encoder: object = None) -> None:
            self._key = Ed25519PublicKey.from_public_bytes(base64.b64decode(key))

        def verify(self, message: bytes, signature: bytes) -> bytes:
            try:
                self._key.verify(signature, message)
            except InvalidSignature as e:
                raise BadSignatureError from e
            return message

    return SimpleNamespace(
        signing=SimpleNamespace(VerifyKey=VerifyKey),
        encoding=SimpleNamespace(Base64Encoder=None),
        exceptions=SimpleNamespace(ValueError=ValueError, BadSignatureError=BadSignatureError),
    )


def _dkimpy() -> ModuleType:
    """dkimpy, not bench/dkim.py (the DKIM bench), which shadows it as `dkim` whenever a
    bench runs: Python puts the script's directory, this one, first on sys.path."""
    here = Path(__file__).resolve().parent
    loaded = sys.modules.get("dkim")
    if loaded is not None and Path(loaded.__file__ or "").resolve().parent.name == "dkim":
        return loaded  # dkimpy is a package: .../dkim/__init__.py
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.modules.pop("dkim", None)
    try:
        module = importlib.import_module("dkim")
    finally:
        sys.path[:] = saved
    if not hasattr(module, "nacl"):  # dkimpy looks `nacl` up in its module at each call
        vars(module)["nacl"] = _nacl_on_cryptography()
    return module


dkim = _dkimpy()


def sink_message(dump: Path) -> bytes:
    """One message as smtp-sink -d wrote it: its X-Client-*/X-Helo-/X-Mail-/X-Rcpt-Args
    lines dropped, LF line ends back to CRLF (the sink stores LF)."""
    lines = dump.read_bytes().split(b"\n")
    while lines and lines[0].split(b":", 1)[0] in (
        b"X-Client-Addr",
        b"X-Client-Proto",
        b"X-Helo-Args",
        b"X-Mail-Args",
        b"X-Rcpt-Args",
    ):
        lines.pop(0)
    return b"\r\n".join(line.rstrip(b"\r") for line in lines)


def verify_signatures(
    message: bytes, dns: dict[bytes, bytes], quiet: bool = False
) -> list[tuple[str, str, bool]]:
    """(a=, s=, verified) of every DKIM-Signature, top first, with `dns` as the only DNS;
    why one failed is printed unless `quiet`."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return dns.get(name)

    d = dkim.DKIM(message)
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    results = []
    for idx in range(count):
        try:
            ok = bool(d.verify(idx=idx, dnsfunc=dnsfunc))
        except dkim.DKIMException as e:
            if not quiet:
                print(f"  signature {idx}: {e}", flush=True)
            ok = False
        fields = d.signature_fields
        results.append((fields[b"a"].decode(), fields[b"s"].decode(), ok))
    return results


def capture_and_verify(od: OpenDkim, messages: int = 2) -> bool:
    """`messages` through the double-signing Postfix into an smtp-sink that dumps them;
    prints each signature's verification. The caller holds POSTFIX_LOCK."""
    dumps = Path(tempfile.mkdtemp(prefix="mailgate-dkim-capture-"))
    os.chown(dumps, pwd.getpwnam("nobody").pw_uid, -1)  # the sink writes as nobody
    log = dumps / "sink.log"
    sink = subprocess.Popen(
        [SMTP_SINK, "-u", "nobody", "-c", "-d", f"{dumps}/m.", f"127.0.0.1:{CAPTURE_PORT}", "100"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(CAPTURE_PORT)
        start_postfix_with_opendkim(POSTFIX_PORT, CAPTURE_PORT, od.port)
        send(POSTFIX_PORT, messages, 1, 512, f"user@{od.domain}")
        wait_delivered(log, messages, 60)
        time.sleep(0.2)  # the count is taken at "."; the dump file is closed just after
        files = sorted(dumps.glob("m.*"))
        ok = len(files) == messages
        for dump in files:
            message = sink_message(dump)
            results = verify_signatures(message, od.dns())
            # the control: one body byte changed, and neither signature may pass
            body = message.index(b"\r\n\r\n") + 4
            tampered = message[:body] + message[body:].replace(b"X", b"Y", 1)
            control = not any(v for _, _, v in verify_signatures(tampered, od.dns(), quiet=True))
            algorithms = {a for a, _, _ in results}
            ok = ok and algorithms == {"rsa-sha256", "ed25519-sha256"} and control
            ok = ok and all(verified for _, _, verified in results)
            shown = ", ".join(f"a={a} s={s} {'pass' if v else 'FAIL'}" for a, s, v in results)
            print(
                f"captured {dump.name}: {len(results)} DKIM-Signature: {shown}; one body byte "
                f"changed: {'both fail' if control else 'STILL VERIFIES'}",
                flush=True,
            )
        return ok
    finally:
        stop_sink(sink)
        shutil.rmtree(dumps, ignore_errors=True)


# --- measurement --------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    accepted: Rate  # smtp-source's rate, and the machine's CPU per message over it
    delivered: float  # msg/s from the first message sent to the last one at the sink
    opendkim_us: tuple[float, float]  # CPU per message of each daemon (rsa, ed25519), µs

    def describe(self, baseline: Run | None = None) -> str:
        text = f"{self.accepted.describe()}   delivered {self.delivered:7,.0f} msg/s"
        if any(self.opendkim_us):
            rsa, ed = self.opendkim_us
            text += f"   opendkim CPU/msg: rsa {rsa:,.0f} µs, ed25519 {ed:,.0f} µs"
        if baseline:
            text += (
                f"   {self.accepted.rate / baseline.accepted.rate:.2f}x accepted, "
                f"{self.delivered / baseline.delivered:.2f}x delivered"
            )
        return text


@dataclass(frozen=True)
class Load:
    messages: int
    sessions: int
    size: int


def measure(od: OpenDkim, sink: subprocess.Popen[bytes], log: Path, seen: int, load: Load) -> Run:
    """One smtp-source run into Postfix as configured, until the sink has every message.
    OpenDKIM signs before Postfix answers 250, so its CPU is read over smtp-source's run."""
    quiet_disk()
    milter_cpu = [process_cpu(pid) for pid in od.pids]
    meter = CpuMeter(load_pids=(sink.pid,))  # smtp-source, a reaped child, is load too
    started, seconds = send(
        POSTFIX_PORT, load.messages, load.sessions, load.size, f"user@{od.domain}"
    )
    accepted = Rate(load.messages / seconds, meter.stop(load.messages))
    rsa, ed = (
        (process_cpu(pid) - before) / load.messages * 1e6
        for pid, before in zip(od.pids, milter_cpu, strict=True)
    )
    done = wait_delivered(log, seen + load.messages, 600)
    return Run(accepted, load.messages / (done - started), (rsa, ed))


POSTFIX, OPENDKIM_RSA, OPENDKIM_BOTH = (
    "postfix",
    "postfix + opendkim rsa",
    "postfix + opendkim rsa+ed25519",
)


def run_anchor(
    load: Load, domain: str = "bench.test", keydir: Path = KEYDIR
) -> tuple[dict[str, Run], bool]:
    """The whole anchor, for this script and for benches that set mailgate beside it:
    OpenDKIM started, the capture verified, Postfix alone, with the RSA milter and with
    both, under POSTFIX_LOCK; Postfix and OpenDKIM stopped after. The runs by name
    (POSTFIX, OPENDKIM_RSA, OPENDKIM_BOTH) and whether both signatures verified."""
    ensure_postfix()
    od = start_opendkim(domain, keydir, MILTER_PORT)
    for s, t in zip(od.selectors, od.txt, strict=True):
        print(f"TXT {s}._domainkey.{od.domain}  {t}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-dkim-"))
    log = tmp / "sink.log"
    runs: dict[str, Run] = {}
    try:
        with postfix_lock():
            try:
                verified = capture_and_verify(od)
                print(f"both signatures verify: {'yes' if verified else 'NO'}", flush=True)
                sink = start_sink(SINK_PORT, log)
                try:
                    wait_port(SINK_PORT)
                    start_postfix(POSTFIX_PORT, SINK_PORT)
                    runs[POSTFIX] = measure(od, sink, log, 0, load)
                    start_postfix_with_opendkim(POSTFIX_PORT, SINK_PORT, od.port, ed25519=False)
                    runs[OPENDKIM_RSA] = measure(od, sink, log, load.messages, load)
                    start_postfix_with_opendkim(POSTFIX_PORT, SINK_PORT, od.port)
                    runs[OPENDKIM_BOTH] = measure(od, sink, log, 2 * load.messages, load)
                finally:
                    stop_sink(sink)
            finally:
                stop_postfix()
    finally:
        stop_opendkim(od)
        shutil.rmtree(tmp, ignore_errors=True)
    return runs, verified


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--domain", default="bench.test")
    p.add_argument("--keydir", type=Path, default=KEYDIR)
    args = p.parse_args()
    header(args.sessions, max(args.messages, 10_000))
    runs, verified = run_anchor(
        Load(args.messages, args.sessions, args.size), args.domain, args.keydir
    )
    base = runs[POSTFIX]
    for name, run in runs.items():
        print(f"{name:31s} {run.describe(None if run is base else base)}", flush=True)
    print(
        f"smtp-source: {args.sessions} sessions, {args.messages:,} messages of "
        f"{args.size:,} bytes per run, From: user@{args.domain}; Postfix relays to smtp-sink "
        "while it takes mail in; CPU/msg is the machine's busy time less smtp-source's and "
        "smtp-sink's (OpenDKIM's included); both OpenDKIM daemons run in every run"
    )
    if not verified:
        sys.exit(1)


if __name__ == "__main__":
    main()
