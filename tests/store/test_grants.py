"""Grants in the store, on every backend: written, read, owned, re-sealed, deleted; the
sealed credentials only through grant_credentials."""

from __future__ import annotations

from dataclasses import replace

from cryptography.fernet import Fernet

from mailgate.mailboxes.grants import seal, unseal
from mailgate.mailboxes.models import (
    AuthMethod,
    Credentials,
    Grant,
    GrantStatus,
    Server,
    TlsMode,
)
from mailgate.models import GRANT_ROUTE, NewMessage, Source, new_id
from mailgate.secretbox import SecretBox
from mailgate.store.protocols import Store


def a_grant(owner: str | None, email: str = "ann@example.com") -> Grant:
    return Grant(
        id=new_id(),
        api_key_id=owner,
        email=email,
        username="ann",
        auth=AuthMethod.PASSWORD,
        imap=Server("imap.example.com", 993, TlsMode.IMPLICIT),
        smtp=Server("smtp.example.com", 587, TlsMode.STARTTLS),
        status=GrantStatus.VALID,
        created_at=1000.0,
        updated_at=1000.0,
    )


async def test_a_grant_is_kept_read_and_owned(store: Store) -> None:
    box = SecretBox(Fernet.generate_key())
    mine, theirs, admins = a_grant("k1"), a_grant("k2", "bob@example.com"), a_grant(None)
    for g in (mine, theirs, admins):
        await store.add_grant(g, seal(box, Credentials(AuthMethod.PASSWORD, "pw-" + g.email)))

    assert await store.get_grant(mine.id) == mine
    assert await store.get_grant("nope") is None
    assert [g.id for g in await store.grants("k1")] == [mine.id]
    assert {g.id for g in await store.grants()} == {mine.id, theirs.id, admins.id}
    sealed = await store.grant_credentials(theirs.id)
    # the password never appears as written (a short piece like "pw-" can turn up in
    # the ciphertext's base64 by chance, so the whole of it is looked for)
    assert sealed is not None and "pw-bob@example.com" not in sealed
    assert unseal(box, sealed) == Credentials(AuthMethod.PASSWORD, "pw-bob@example.com")


async def test_update_keeps_the_credentials_unless_new_ones_are_given(store: Store) -> None:
    box = SecretBox(Fernet.generate_key())
    g = a_grant("k1")
    await store.add_grant(g, seal(box, Credentials(AuthMethod.PASSWORD, "old")))
    moved = replace(g, smtp=Server("smtp2.example.com", 465, TlsMode.IMPLICIT), updated_at=2.0)
    assert await store.update_grant(moved, None)
    assert await store.get_grant(g.id) == moved
    assert unseal(box, await store.grant_credentials(g.id) or "").secret == "old"
    token = Credentials(AuthMethod.XOAUTH2, "tok")
    assert await store.update_grant(replace(moved, auth=AuthMethod.XOAUTH2), seal(box, token))
    assert unseal(box, await store.grant_credentials(g.id) or "") == token

    assert await store.set_grant_status(g.id, GrantStatus.INVALID, "the password was refused")
    got = await store.get_grant(g.id)
    assert got is not None and got.status is GrantStatus.INVALID
    assert got.error == "the password was refused"

    assert await store.delete_grant(g.id)
    assert not await store.delete_grant(g.id)
    assert await store.get_grant(g.id) is None and await store.grant_credentials(g.id) is None
    assert not await store.update_grant(moved, None)


def test_credentials_never_show_their_secret() -> None:
    assert "hunter2" not in repr(Credentials(AuthMethod.PASSWORD, "hunter2"))


async def test_a_grants_scheduled_messages_are_found_by_its_route(store: Store) -> None:
    g = a_grant("k1")
    await store.add_grant(g, "sealed")
    raw = b"From: ann@example.com\r\nSubject: later\r\n\r\nhi\r\n"
    later = NewMessage(
        raw,
        "ann@example.com",
        ("bob@example.net",),
        Source.HTTP,
        "k1",
        scheduled_at=4e9,
        route=GRANT_ROUTE.format(g.id),
    )
    now = NewMessage(
        raw,
        "ann@example.com",
        ("bob@example.net",),
        Source.HTTP,
        "k1",
        route=GRANT_ROUTE.format(g.id),
    )
    elsewhere = NewMessage(
        raw, "ann@example.com", ("bob@example.net",), Source.HTTP, "k1", scheduled_at=4e9
    )
    for m in (later, now, elsewhere):
        await store.enqueue(m)
    assert [m.id for m in await store.grant_scheduled(g.id, 10)] == [later.id]
    assert {r.domain for r in await store.recipients(later.id)} == {f"(grant:{g.id})"}
