"""Threads: messages grouped by the Message-IDs they name, across folders (a reply in Sent
joins its thread in INBOX). Pure functions; the store keeps the grouping.

JWZ's algorithm (https://www.jwz.org/doc/threading.html) links each message to the
Message-IDs in its References and In-Reply-To, placeholders standing in for messages not
seen, and a thread is a connected set of that graph. mailgate keeps the sets, not the
tree: every Message-ID a message names (its own, In-Reply-To, References) is a key of
the grant's thread table pointing at a thread. A message arriving looks its keys up;
none found: a new thread; one: that one; several: the threads are joined under the
oldest id (its own keys and rows re-pointed). So the grouping is the connected sets,
whatever order messages arrive in (tested with generated arrival orders). JWZ's last
step, joining threads by subject alone, is left out on purpose: it joins unrelated
"Hello" mails, and Nylas' threads do not do it either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_ID = re.compile(r"<[^<>\s]+>")


def message_ids(header: str) -> list[str]:
    """The <id>s of a References or In-Reply-To header, in order (junk between dropped)."""
    return _ID.findall(header or "")


def keys(message_id: str, in_reply_to: str, references: Iterable[str]) -> list[str]:
    """Every Message-ID a message names, its own first, without repeats."""
    out: list[str] = []
    for k in [message_id, *message_ids(in_reply_to), *references]:
        k = k.strip()
        if k and k not in out:
            out.append(k)
    return out


@dataclass(frozen=True, slots=True)
class Joined:
    thread_id: str  # the message's thread
    merged: tuple[str, ...]  # threads joined into it (their rows move to thread_id)


def join(found: Iterable[str], fresh: str) -> Joined:
    """The thread of a message whose keys point at `found` threads; `fresh` when none."""
    found = sorted(set(found))
    if not found:
        return Joined(fresh, ())
    return Joined(found[0], tuple(found[1:]))


class Threader:
    """The store's procedure in memory (the generated tests compare it with the
    connected sets; store/mailbox.py runs the same `keys` and `join` against its table)."""

    def __init__(self) -> None:
        self.by_key: dict[str, str] = {}
        self.of: dict[str, str] = {}  # message -> thread

    def add(self, name: str, key_list: list[str], fresh: str) -> str:
        j = join((self.by_key[k] for k in key_list if k in self.by_key), fresh)
        for old in j.merged:
            for k, t in self.by_key.items():
                if t == old:
                    self.by_key[k] = j.thread_id
            for m, t in self.of.items():
                if t == old:
                    self.of[m] = j.thread_id
        for k in key_list:
            self.by_key[k] = j.thread_id
        self.of[name] = j.thread_id
        return j.thread_id


def connected(messages: Mapping[str, list[str]]) -> list[frozenset[str]]:
    """The connected sets of messages sharing any key (union-find): what threads are."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for name, ks in messages.items():
        for k in ks:
            a, b = find("m:" + name), find("k:" + k)
            if a != b:
                parent[a] = b
        find("m:" + name)
    groups: dict[str, set[str]] = {}
    for name in messages:
        groups.setdefault(find("m:" + name), set()).add(name)
    return [frozenset(g) for g in groups.values()]
