"""STARTTLS to destinations: opportunistic, verified, required, and the fallback."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mailgate.models import RecipientStatus
from tests.delivery.conftest import World, free_port
from tests.delivery.peers import Script, SinkController

CA = trustme.CA()  # trusted only where a test hands its certificate over as tls_ca_file


@pytest.fixture
def sink() -> Iterator[tuple[Script, int]]:
    """This module's sink offers STARTTLS with a certificate from a CA nobody trusts."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CA.issue_cert("mx.example.test").configure_cert(ctx)
    script = Script()
    controller = SinkController(script, free_port(), tls_context=ctx)
    controller.start()
    script.connections = 0
    yield script, controller.port
    controller.stop()


async def status_after(world: World, **cfg: object) -> RecipientStatus:
    mid = await world.queue("a@example.test")
    await world.run_until_idle(world.deliverer(**cfg))
    [r] = await world.store.recipients(mid)
    return r.status


async def test_opportunistic_tls_delivers_over_tls(world: World) -> None:
    assert await status_after(world, tls="opportunistic") is RecipientStatus.DELIVERED
    assert world.script.received[0].tls


async def test_bad_certificate_with_verification_falls_back_to_plaintext(world: World) -> None:
    status = await status_after(world, tls="opportunistic", verify_certificates=True)
    assert status is RecipientStatus.DELIVERED
    assert not world.script.received[0].tls  # a failed handshake, then plaintext


async def test_required_tls_with_bad_certificate_defers(world: World) -> None:
    status = await status_after(world, tls="required", verify_certificates=True)
    assert status is RecipientStatus.DEFERRED
    assert world.script.received == []


async def test_required_tls_with_trusted_certificate_delivers(world: World) -> None:
    status = await status_after(world, tls="required")  # no verification asked
    assert status is RecipientStatus.DELIVERED and world.script.received[0].tls


async def test_tls_handshake_failures_defer_until_the_certificate_is_trusted(
    world: World, tmp_path: Path
) -> None:
    """A destination whose certificate fails verification under `required`: the mail
    waits (deferred, never sent in plaintext), and goes once the CA is configured."""
    mid = await world.queue("a@example.test")
    await world.run_until_idle(world.deliverer(tls="required", verify_certificates=True))
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.DEFERRED and world.script.received == []
    ca_file = tmp_path / "ca.pem"
    CA.cert_pem.write_to_path(str(ca_file))
    world.clock.advance(100)
    fixed = world.deliverer(tls="required", verify_certificates=True, tls_ca_file=str(ca_file))
    await world.run_until_idle(fixed)
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.DELIVERED and world.script.received[0].tls
