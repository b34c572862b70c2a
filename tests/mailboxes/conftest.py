"""The mailbox tests run against a real Dovecot (tests/mailboxes/dovecot.py): one for the
whole run (each test has its own user, so its own mailbox), and one of its own for a
test that stops the server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from mailgate.config import MailboxesConfig
from mailgate.mailboxes.grants import seal
from mailgate.mailboxes.imap import Connection
from mailgate.mailboxes.models import (
    AuthMethod,
    Credentials,
    Grant,
    GrantStatus,
    Server,
    TlsMode,
)
from mailgate.mailboxes.service import Mailboxes
from mailgate.models import new_id
from mailgate.secretbox import SecretBox
from mailgate.store import Store, open_store
from tests.conftest import pg_schema
from tests.mailboxes.dovecot import Dovecot, running_dovecot


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    with running_dovecot() as server:
        yield server


@pytest.fixture
def own_dovecot() -> Iterator[Dovecot]:
    """A Dovecot for one test alone (it may be stopped and started)."""
    with running_dovecot() as server:
        yield server


@pytest.fixture(scope="session")
def plain_dovecot() -> Iterator[Dovecot]:
    """A server offering IMAP4rev1 and little else: no CONDSTORE, QRESYNC, IDLE, MOVE."""
    with running_dovecot("IMAP4rev1 LITERAL+ SASL-IR UIDPLUS SPECIAL-USE") as server:
        yield server


@dataclass
class Box:
    """A mailbox wired up: the Dovecot user, the store, the grant, the service."""

    server: Dovecot
    user: str
    store: Store
    grant: Grant
    mailboxes: Mailboxes

    async def refresh(self) -> Grant:
        grant = await self.store.get_grant(self.grant.id)
        assert grant is not None
        self.grant = grant
        return grant


def a_user(server: Dovecot) -> str:
    return server.take_user()


def mailboxes_for(
    store: Store, box: SecretBox, server: Dovecot, tmp: Path, **cfg: object
) -> Mailboxes:
    ca = tmp / "imap-ca.pem"
    server.ca.cert_pem.write_to_path(str(ca))
    settings: dict[str, object] = {"poll_interval": 0.5, **cfg}
    config = MailboxesConfig(
        allow_private_networks=["127.0.0.0/8"],
        tls_ca_file=str(ca),
        **settings,  # type: ignore[arg-type]
    )
    return Mailboxes(store, box, config)


async def add_grant(
    store: Store,
    secrets: SecretBox,
    server: Dovecot,
    user: str,
    tls: TlsMode = TlsMode.NONE,
    password: str | None = None,
) -> Grant:
    port = server.imaps_port if tls is TlsMode.IMPLICIT else server.imap_port
    grant = Grant(
        id=new_id(),
        api_key_id="key1",
        email=user,
        username=user,
        auth=AuthMethod.PASSWORD,
        imap=Server(server.host, port, tls),
        smtp=Server(server.host, 1, TlsMode.NONE),  # sending is not tested here
        status=GrantStatus.VALID,
        created_at=1000.0,
        updated_at=1000.0,
    )
    creds = Credentials(AuthMethod.PASSWORD, password or server.users[user])
    await store.add_grant(grant, seal(secrets, creds))
    return grant


@contextlib.asynccontextmanager
async def wired(
    server: Dovecot, url: str, tmp: Path, tls: TlsMode = TlsMode.NONE, **cfg: object
) -> AsyncIterator[Box]:
    store = open_store(url)
    await store.open()
    secrets = SecretBox(Fernet.generate_key())
    service = mailboxes_for(store, secrets, server, tmp, **cfg)
    try:
        user = a_user(server)
        grant = await add_grant(store, secrets, server, user, tls)
        yield Box(server, user, store, grant, service)
    finally:
        await service.close()
        await store.close()


@pytest.fixture
async def box(dovecot: Dovecot, tmp_path: Path) -> AsyncIterator[Box]:
    async with wired(dovecot, f"sqlite:///{tmp_path / 'mailgate.db'}", tmp_path) as b:
        yield b


@pytest.fixture(params=["sqlite", "postgres"])
async def any_box(
    request: pytest.FixtureRequest, dovecot: Dovecot, tmp_path: Path
) -> AsyncIterator[Box]:
    """The same mailbox on each store backend."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "postgres":
            url = await stack.enter_async_context(pg_schema())
        else:
            url = f"sqlite:///{tmp_path / 'mailgate.db'}"
        yield await stack.enter_async_context(wired(dovecot, url, tmp_path))


@dataclass
class OpenConnections:
    """IMAP connections of a Mailboxes counted as they are opened and closed."""

    now: int = 0
    peak: int = 0


def count_connections(service: Mailboxes) -> OpenConnections:
    """Wrap service.open so each connection it opens is counted until it closes."""
    counted = OpenConnections()
    opened = service.open

    async def counting(grant: Grant, creds: Credentials | None = None) -> Connection:
        conn = await opened(grant, creds)
        counted.now += 1
        counted.peak = max(counted.peak, counted.now)
        closing = conn.close

        async def close() -> None:
            counted.now -= 1
            await closing()

        conn.close = close  # type: ignore[method-assign]
        return conn

    service.open = counting  # type: ignore[method-assign]
    return counted
