"""Sends that reach the door together share one suppression read (ingress/lookups.py):
through the real server, each 202 still names only its own recipients, a domain-scoped
entry still stops only its domain's mail, and nothing listed is delivered."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.domains.conftest import INBOX, Mail
from tests.suppressions.conftest import call, make_key, send

SENDS = 40


def test_concurrent_sends_each_hear_of_their_own_recipients_only(mail: Mail) -> None:
    key = make_key(mail, "app")
    entries = [
        {"address": f"listed@{INBOX}", "reason": "complaint"},
        {"address": f"brand@{INBOX}", "reason": "unsubscribe", "domain": "brand-a.test"},
    ]
    added = call(mail, key, "POST", "/v1/suppressions", json={"suppressions": entries})
    assert added.status_code == 201, added.text

    def send_one(i: int) -> tuple[int, dict]:
        # four shapes, interleaved so that sends of every shape arrive together
        shape = i % 4
        sender = "news@brand-a.test" if shape == 2 else "news@brand-b.test"
        to = [
            [f"listed@{INBOX}", f"free-{i}@{INBOX}"],
            [f"free-{i}@{INBOX}"],
            [f"brand@{INBOX}"],
            [f"brand@{INBOX}", f"free-{i}@{INBOX}"],
        ][shape]
        return i, send(mail, key, to, sender)

    with ThreadPoolExecutor(SENDS) as pool:
        answers = list(pool.map(send_one, range(SENDS)))

    expected_by_shape = [
        {f"listed@{INBOX}": ("suppressed", "complaint"), "free": ("queued", None)},
        {"free": ("queued", None)},
        {f"brand@{INBOX}": ("suppressed", "unsubscribe")},  # brand-a's own mail
        {f"brand@{INBOX}": ("queued", None), "free": ("queued", None)},  # brand-b's
    ]
    for i, answer in answers:
        expected = {
            (f"free-{i}@{INBOX}" if a == "free" else a): v
            for a, v in expected_by_shape[i % 4].items()
        }
        got = {r["address"]: (r["status"], r.get("reason")) for r in answer["recipients"]}
        assert got == expected, (i, answer)
    # what the door said is what the store holds
    counts = mail.server.call(lambda st: st.status_counts())
    assert counts["suppressed"] == SENDS // 4 * 2, counts
