"""Delivery to Postfix's own software: smtp-sink (which pipelines, unlike the aiosmtpd
sink) with its reject and disconnect switches, and a real Postfix that takes the mail
into its queue and relays it on. Installed by scripts/setup --test (Debian's postfix)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.models import RecipientStatus
from tests.delivery.conftest import World, free_port

SMTP_SINK = "/usr/sbin/smtp-sink"
POSTFIX_RELAY = Path(__file__).resolve().parents[2] / "scripts" / "postfix-relay"

if not Path(SMTP_SINK).exists():  # pragma: no cover - scripts/setup --test installs it
    if os.environ.get("CI") == "true":
        raise RuntimeError("Postfix (smtp-sink) is missing: scripts/setup --test installs it")
    pytest.skip(
        "Postfix is not installed (scripts/setup --test installs it)", allow_module_level=True
    )


class SmtpSink:
    """/usr/sbin/smtp-sink on a loopback port, dumping each message to a directory."""

    def __init__(self, *options: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mailgate-sink-"))
        self.dir.chmod(0o777)  # smtp-sink writes as nobody
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", "-d", f"{self.dir}/%M.", *options, self.endpoint, "100"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.2)

    def messages(self) -> list[str]:
        return [p.read_text(errors="replace") for p in sorted(self.dir.iterdir())]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def smtp_sink(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    sink = SmtpSink(*getattr(request, "param", ()))
    yield sink
    sink.stop()


async def deliver_all(world: World, port: int, count: int, **cfg: object) -> list[str]:
    ids = [await world.queue(f"user{i}@example.test") for i in range(count)]
    await world.run_until_idle(world.deliverer(port=port, **cfg))
    return ids


async def statuses(world: World, ids: list[str]) -> set[RecipientStatus]:
    return {r.status for mid in ids for r in await world.store.recipients(mid)}


@pytest.mark.parametrize(
    "smtp_sink", [(), ("-p",)], ids=["pipelining", "no-pipelining"], indirect=True
)
async def test_smtp_sink_takes_100_messages_over_capped_connections(
    world: World, smtp_sink: SmtpSink
) -> None:
    ids = await deliver_all(world, smtp_sink.port, 100, max_connections_per_domain=2)
    assert await statuses(world, ids) == {RecipientStatus.DELIVERED}
    dumps = smtp_sink.messages()
    assert len(dumps) == 100
    assert all("Subject: story" in d for d in dumps)
    assert sorted(d.split("X-Rcpt-Args: <", 1)[1].split(">")[0] for d in dumps) == sorted(
        f"user{i}@example.test" for i in range(100)
    )


@pytest.mark.parametrize(
    ("smtp_sink", "expected", "code"),
    [
        (("-r", "RCPT"), RecipientStatus.DEFERRED, 450),
        (("-f", "RCPT"), RecipientStatus.BOUNCED, 500),
        (("-r", "."), RecipientStatus.DEFERRED, 450),
        (("-f", "."), RecipientStatus.BOUNCED, 500),
        (("-q", "."), RecipientStatus.DEFERRED, 451),  # hangs up after the dot: may dup
        (("-r", "MAIL"), RecipientStatus.DEFERRED, 450),
    ],
    indirect=["smtp_sink"],
    ids=["rcpt-450", "rcpt-500", "dot-450", "dot-500", "dot-hangup", "mail-450"],
)
async def test_smtp_sink_rejections_map_to_outcomes(
    world: World, smtp_sink: SmtpSink, expected: RecipientStatus, code: int
) -> None:
    ids = await deliver_all(world, smtp_sink.port, 3)
    for mid in ids:
        [r] = await world.store.recipients(mid)
        assert r.status is expected and r.last_reply is not None
        assert r.last_reply.code == code, r.last_reply
    assert await world.store.get_raw(ids[0]) is not None


@pytest.fixture
def real_postfix() -> Iterator[tuple[int, SmtpSink]]:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            raise RuntimeError("the real-Postfix test needs root")
        pytest.skip("configuring the system Postfix needs root")
    onward = SmtpSink()
    port = free_port()
    # an empty queue first: mail left by a benchmark must not reach this test's sink
    subprocess.run(["postfix", "stop"], check=False, capture_output=True)
    subprocess.run(["postsuper", "-d", "ALL"], check=False, capture_output=True)
    subprocess.run(
        ["bash", str(POSTFIX_RELAY), str(port), f"127.0.0.1:{onward.port}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    yield port, onward
    subprocess.run(["postfix", "stop"], check=False, capture_output=True)
    onward.stop()


async def test_real_postfix_queues_and_relays_what_mailgate_delivers(
    world: World, real_postfix: tuple[int, SmtpSink]
) -> None:
    port, onward = real_postfix
    ids = await deliver_all(world, port, 20, tls="opportunistic")
    assert await statuses(world, ids) == {RecipientStatus.DELIVERED}
    [r] = await world.store.recipients(ids[0])
    assert r.last_reply is not None and "queued as" in r.last_reply.text  # Postfix's 250
    deadline = time.monotonic() + 60
    relayed = onward.messages()
    # smtp-sink writes a file as the message streams in: the 20th may be there but not
    # yet whole (seen once on a loaded machine), so wait for every one's header too
    while time.monotonic() < deadline and not (
        len(relayed) == 20 and all("Subject: story" in m for m in relayed)
    ):
        time.sleep(0.2)
        relayed = onward.messages()
    assert len(relayed) == 20, "Postfix did not relay everything it accepted"
    assert all("Subject: story" in m for m in relayed)
