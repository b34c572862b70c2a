"""Sending domains in the store, on every backend (SQLite, PostgreSQL, the SQLite writer
process): keys kept sealed, checks recorded, a change of state written once as an event
even when checkers race, due checks claimed by one."""

from __future__ import annotations

import asyncio

from cryptography.fernet import Fernet

from mailgate.domains.keys import new_keys
from mailgate.domains.sending import SendingDomains, candidates
from mailgate.models import EventKind, RecordCheck, RecordStatus
from mailgate.secretbox import SecretBox
from mailgate.store import Store

BOX = SecretBox(Fernet.generate_key())
OK = RecordCheck(RecordStatus.VERIFIED, ("v=DKIM1; ...",), True)


async def add(store: Store, name: str, box: SecretBox = BOX) -> None:
    assert await store.add_domain(name, new_keys(name, (), box, 1000.0), 1000.0)


async def verify_all(store: Store, name: str, sending: bool = True) -> None:
    domain = await store.get_domain(name)
    assert domain is not None
    checks = {f"dkim:{k.selector}": OK if sending else RecordCheck() for k in domain.keys}
    await store.record_domain_check(name, checks, sending, 1001.0, 5000.0)


def domain_events(events: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(e.kind.value, e.details["domain"]) for e in events if e.message_id == ""]


async def test_domains_keys_checks_and_events(store: Store) -> None:
    await add(store, "example.org")
    assert not await store.add_domain("example.org", [], 1.0), "added once"
    domain = await store.get_domain("example.org")
    assert domain is not None and not domain.sending and domain.checked_at is None
    assert {k.algorithm.value for k in domain.keys} == {"rsa-sha256", "ed25519-sha256"}
    assert await store.sending_keys() == ([], {})
    await verify_all(store, "example.org")
    await verify_all(store, "example.org")  # the same state again: no second event
    domains, sealed = await store.sending_keys()
    assert [d.name for d in domains] == ["example.org"] and len(sealed) == 2
    assert all(BOX.unseal(s).startswith(b"-----BEGIN PRIVATE KEY") for s in sealed.values())
    await verify_all(store, "example.org", sending=False)
    events, _ = await store.events_since(None, 100)
    assert domain_events(events) == [
        (EventKind.DOMAIN_VERIFIED.value, "example.org"),
        (EventKind.DOMAIN_UNVERIFIED.value, "example.org"),
    ]
    taken = [k.selector for k in domain.keys]
    assert await store.add_domain_keys("example.org", new_keys("example.org", taken, BOX, 2000.0))
    assert not await store.add_domain_keys("nowhere.example", [])
    assert await store.retire_domain_key("example.org", taken[0], 3000.0)
    assert not await store.retire_domain_key("example.org", taken[0], 3000.0), "retired once"
    after = await store.get_domain("example.org")
    assert after is not None and len(after.keys) == 4
    assert [k.selector for k in after.keys if k.retired_at] == [taken[0]]
    assert [d.name for d in await store.list_domains()] == ["example.org"]
    assert await store.remove_domain("example.org")
    assert await store.get_domain("example.org") is None
    assert not await store.remove_domain("example.org")


async def test_racing_checkers_write_one_event_per_change(store: Store) -> None:
    await add(store, "race.example")
    for i in range(10):
        sending = i % 2 == 0
        await asyncio.gather(*(verify_all(store, "race.example", sending) for _ in range(3)))
    events, _ = await store.events_since(None, 100)
    kinds = [k for k, _ in domain_events(events)]
    assert kinds == [EventKind.DOMAIN_VERIFIED.value, EventKind.DOMAIN_UNVERIFIED.value] * 5


async def test_due_checks_are_claimed_once(store: Store) -> None:
    await add(store, "a.example")
    await add(store, "b.example")
    claims = await asyncio.gather(*(store.claim_domain_checks(1500.0, 1800.0) for _ in range(4)))
    assert sorted(n for c in claims for n in c) == ["a.example", "b.example"]
    assert await store.claim_domain_checks(1700.0, 2000.0) == []
    assert sorted(await store.claim_domain_checks(1800.0, 2100.0)) == ["a.example", "b.example"]


async def test_a_key_that_cannot_be_opened_stops_only_itself(store: Store) -> None:
    await add(store, "good.example")
    await add(store, "sealed-elsewhere.example", SecretBox(Fernet.generate_key()))
    await verify_all(store, "good.example")
    await verify_all(store, "sealed-elsewhere.example")
    sending = SendingDomains(store, BOX, 60.0, lambda: 1_700_000_000.0)
    await sending.refresh()
    assert sending.find("good.example") is not None
    assert sending.find("sealed-elsewhere.example") is None
    signed = sending.sign(b"From: a@mail.good.example\r\n\r\nhi\r\n", "a@mail.good.example")
    assert signed.count(b"DKIM-Signature:") == 2 and b"d=good.example;" in signed
    assert sending.sign(b"x", "@good.example") == b"x", "no local part: not an address"


def test_candidates_are_parents_in_a_labels() -> None:
    assert candidates("A.b.Example.org.") == ["a.b.example.org", "b.example.org", "example.org"]
    assert candidates("mail.例え.テスト") == [
        "mail.xn--r8jz45g.xn--zckzah",
        "xn--r8jz45g.xn--zckzah",
    ]
    assert candidates("localhost") == ["localhost"]
