"""A real Dovecot on loopback for the mailbox tests and the sync bench.

Its own config file, base_dir, passwd-file users with plain passwords and Maildirs in
one directory; IMAP with STARTTLS and IMAPS with a trustme certificate; IDLE, CONDSTORE
and QRESYNC (Dovecot's defaults); the SPECIAL-USE folders created at first login. Runs
as root here, so mail belongs to the `dovecot` user (Dovecot refuses uid 0 for mail) and
the directory lives outside pytest's private tmp (its login and auth processes drop
privileges). Stopped by its PID."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import imapclient
import trustme

DOVECOT = "/usr/sbin/dovecot"
USERS = 200  # mailboxes a server has ready

CONF = """\
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = mg-{imap}
log_path = {dir}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{dir}/cert.pem
ssl_key = <{dir}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2
auth_cache_size = 0
auth_failure_delay = 0
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
first_valid_uid = 100
mail_uid = dovecot
mail_gid = dovecot
mail_location = maildir:{dir}/mail/%u
mail_max_userip_connections = 1000
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={dir}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
  process_min_avail = 2
}}
service anvil {{
  chroot =
}}
protocol imap {{
  imap_idle_notify_interval = 1 mins
{capability}}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
  mailbox Archive {{
    special_use = \\Archive
    auto = subscribe
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = subscribe
  }}
}}
"""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started it ends (a test run
    killed by a timeout leaves no Dovecot behind; its children follow their master)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Dovecot:
    dir: Path
    imap_port: int  # plain, STARTTLS offered
    imaps_port: int  # TLS from the first byte
    ca: trustme.CA
    users: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    host = "127.0.0.1"

    # -- the process ---------------------------------------------------------------
    def start(self) -> None:
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.dir / "dovecot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: kill() takes every child
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"dovecot exited: {err} {self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.imap_port), timeout=1) as s,
            ):
                if s.recv(100).startswith(b"* OK"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"dovecot did not answer: {self.log()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        # its login and imap children go with the master; wait until the port is free
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.imap_port), timeout=0.2):
                    pass
            except OSError:
                return
            time.sleep(0.05)

    def kill(self) -> None:
        """The server dies at once, mid-command: every process of it frozen (SIGSTOP, so
        nothing more is answered from here on), then killed."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()

    def log(self) -> str:
        path = self.dir / "dovecot.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    # -- users and their mail ---------------------------------------------------------
    def add_users(self, count: int) -> None:
        """Users made before the server starts: Dovecot reads a changed passwd-file at
        most once a second, so users added one by one would be unknown for a while."""
        for i in range(len(self.users), len(self.users) + count):
            self.users[f"user{i}@example.test"] = f"pw{i}-secret"
        lines = "".join(f"{u}:{{PLAIN}}{p}\n" for u, p in self.users.items())
        (self.dir / "passwd").write_text(lines)
        (self.dir / "passwd").chmod(0o644)
        self.free = [u for u in self.users if u not in getattr(self, "taken", set())]

    def take_user(self) -> str:
        """A user no test has used yet (an empty mailbox)."""
        user = self.free.pop(0)
        self.taken = getattr(self, "taken", set()) | {user}
        return user

    def maildir(self, user: str) -> Path:
        return self.dir / "mail" / user

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def client(self, user: str) -> imapclient.IMAPClient:
        """Another client of the mailbox (what a user's mail program does)."""
        c = imapclient.IMAPClient(self.host, port=self.imap_port, ssl=False, timeout=10)
        c.login(user, self.users[user])
        return c

    def append(
        self,
        user: str,
        raw: bytes,
        folder: str = "INBOX",
        flags: tuple[str, ...] = (),
    ) -> int:
        """APPEND as another client; the new UID."""
        with contextlib.closing(_Closing(self.client(user))) as c:
            reply = c.client.append(folder, raw, flags=flags)
        return _appended_uid(reply)


class _Closing:
    def __init__(self, client: imapclient.IMAPClient) -> None:
        self.client = client

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.logout()


def _appended_uid(reply: bytes) -> int:
    # "[APPENDUID <uidvalidity> <uid>] Append completed."
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    if "APPENDUID" in text:
        return int(text.split("APPENDUID", 1)[1].split("]", 1)[0].split()[1])
    return 0


def message(
    subject: str = "Hello",
    *,
    message_id: str | None = None,
    sender: str = "Bob <bob@example.net>",
    to: str = "alice@example.test",
    in_reply_to: str | None = None,
    references: str | None = None,
    date: str = "Tue, 01 Dec 2026 10:00:00 +0000",
    body: str = "Hi there, this is the text.",
) -> bytes:
    headers = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: {message_id or f'<{time.monotonic_ns()}.{os.getpid()}@example.net>'}",
    ]
    if in_reply_to:
        headers.append(f"In-Reply-To: {in_reply_to}")
    if references:
        headers.append(f"References: {references}")
    headers += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8"]
    return ("\r\n".join(headers) + "\r\n\r\n" + body + "\r\n").encode()


@contextlib.contextmanager
def running_dovecot(capabilities: str | None = None) -> Iterator[Dovecot]:
    """capabilities: what the server says it offers instead of Dovecot's whole list
    (an older or plainer IMAP server: no CONDSTORE, QRESYNC, IDLE or MOVE, say)."""
    path = Path(tempfile.mkdtemp(prefix="mg-dovecot-"))
    try:
        path.chmod(0o755)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(path / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(path / "cert.pem"))
        imap, imaps = free_port(), free_port()
        capability = f"  imap_capability = {capabilities}\n" if capabilities else ""
        (path / "dovecot.conf").write_text(
            CONF.format(dir=path, imap=imap, imaps=imaps, capability=capability)
        )
        for sub in ("mail", "home"):
            (path / sub).mkdir()
            shutil.chown(path / sub, "dovecot", "dovecot")
        server = Dovecot(path, imap, imaps, ca)
        server.add_users(USERS)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(path, ignore_errors=True)
