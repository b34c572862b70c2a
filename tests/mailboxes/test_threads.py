"""Threads: the pure grouping (generated messages, every arrival order) and the store's
threads across INBOX and Sent of a real mailbox."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.mailboxes import threads
from mailgate.mailboxes.models import MessageFilter, ThreadFilter
from tests.mailboxes.conftest import Box
from tests.mailboxes.dovecot import message

IDS = [f"<m{i}@x>" for i in range(12)]


@st.composite
def mailboxes(draw: st.DrawFn) -> dict[str, list[str]]:
    """Messages naming Message-IDs from a small pool (so they collide and chain), some
    without one of their own."""
    out = {}
    for n in range(draw(st.integers(1, 12))):
        own = draw(st.sampled_from(["", *IDS]))
        refs = draw(st.lists(st.sampled_from(IDS), max_size=4))
        reply = draw(st.sampled_from(["", *IDS]))
        out[f"msg{n}"] = threads.keys(own, reply, refs)
    return out


@settings(max_examples=300, deadline=None)
@given(mailboxes(), st.randoms(use_true_random=False))
def test_incremental_threads_are_the_connected_sets_in_any_order(
    box: dict[str, list[str]], rnd: object
) -> None:
    order = list(box)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    t = threads.Threader()
    for i, name in enumerate(order):
        t.add(name, box[name], fresh=f"t{i:03d}")
    grouped: dict[str, set[str]] = {}
    for name, tid in t.of.items():
        grouped.setdefault(tid, set()).add(name)
    assert sorted(map(sorted, grouped.values())) == sorted(map(sorted, threads.connected(box)))


def test_keys_read_headers_as_jwz_does() -> None:
    assert threads.message_ids("junk <a@x> more <b@y>\r\n <c@z>") == ["<a@x>", "<b@y>", "<c@z>"]
    assert threads.keys("<me@x>", "<a@x> (Bob's message)", ["<a@x>", "<b@x>"]) == [
        "<me@x>",
        "<a@x>",
        "<b@x>",
    ]
    assert threads.join([], "new") == threads.Joined("new", ())
    assert threads.join(["t2", "t1", "t2"], "new") == threads.Joined("t1", ("t2",))


async def test_a_reply_in_sent_joins_its_thread_in_inbox(any_box: Box) -> None:
    b = any_box
    b.server.append(b.user, message("Plans", message_id="<p1@example.net>"))
    b.server.append(
        b.user,
        message(
            "Re: Plans",
            message_id="<p2@example.test>",
            sender=b.user,
            to="bob@example.net",
            in_reply_to="<p1@example.net>",
            references="<p1@example.net>",
            date="Tue, 01 Dec 2026 11:00:00 +0000",
        ),
        folder="Sent",
    )
    b.server.append(b.user, message("Unrelated", message_id="<u1@example.net>"))
    await b.mailboxes.sync_now(b.grant)

    listed, _ = await b.mailboxes.threads(b.grant, ThreadFilter())
    assert sorted(len(t.message_ids) for t in listed) == [1, 2]
    plans = next(t for t in listed if len(t.message_ids) == 2)
    assert plans.subject == "Plans"
    assert len(plans.folder_ids) == 2  # INBOX and Sent
    got = await b.mailboxes.thread(b.grant, plans.id)
    assert got == plans

    # the next in the thread arrives later, naming only the reply: it joins too
    b.server.append(
        b.user,
        message(
            "Re: Re: Plans",
            message_id="<p3@example.net>",
            in_reply_to="<p2@example.test>",
            date="Tue, 01 Dec 2026 12:00:00 +0000",
        ),
    )
    await b.mailboxes.sync_now(b.grant)
    again = await b.mailboxes.thread(b.grant, plans.id)
    assert again is not None and len(again.message_ids) == 3
    assert again.snippet and again.latest_message_date > plans.latest_message_date
    inbox_threads, _ = await b.mailboxes.threads(b.grant, ThreadFilter(in_folder="sent"))
    assert [t.id for t in inbox_threads] == [plans.id]
    in_thread, _ = await b.mailboxes.messages(b.grant, MessageFilter(thread_id=plans.id))
    assert len(in_thread) == 3


async def test_threads_that_meet_later_are_joined(box: Box) -> None:
    """A reply synced before the message it answers, and a third naming both: one thread."""
    b = box
    b.server.append(b.user, message("A", message_id="<a@x>"))
    b.server.append(b.user, message("B", message_id="<b@x>", references="<root@x>"))
    await b.mailboxes.sync_now(b.grant)
    assert len((await b.mailboxes.threads(b.grant, ThreadFilter()))[0]) == 2
    b.server.append(b.user, message("C", message_id="<c@x>", references="<a@x> <root@x>"))
    await b.mailboxes.sync_now(b.grant)
    (only,), _ = await b.mailboxes.threads(b.grant, ThreadFilter())
    assert len(only.message_ids) == 3
