"""Email addresses: which envelope and header addresses mailgate will use.

Deliberately stricter than RFC 5321 allows: no source routes, no %-hacks, no bang
paths, no quoted local parts that hide an @, one @ only. Both ingresses use these rules.
"""

from __future__ import annotations

import functools
import re

# RFC 5321 Dot-atom / quoted local part, kept deliberately strict for relaying.
_ATOM = r"[A-Za-z0-9!#$&'*+/=?^_`{|}~-]+"  # no % and no ! (classic relay tricks)
_LOCAL_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_LOCAL_UTF8 = r"[^\s\"(),.:;<>@\[\\\]%!]+(?:\.[^\s\"(),.:;<>@\[\\\]%!]+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?|xn--[A-Za-z0-9-]+)"
_UTF8_LABEL = r"[^\s\x00-\x2c\x2e\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]+"
_DOMAIN = rf"(?:{_LABEL}|{_UTF8_LABEL})(?:\.(?:{_LABEL}|{_UTF8_LABEL}))+"
_ADDR_LITERAL = r"\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]"
_MAILBOX = re.compile(
    rf"^(?P<local>{_LOCAL_DOT_ATOM}|{_QUOTED}|{_LOCAL_UTF8})@(?P<domain>{_DOMAIN}|{_ADDR_LITERAL})$"
)


def address_problem(address: str) -> str | None:
    """Why an envelope address may not be used, or None when it is a plain mailbox."""
    if not address:
        return "Empty address"
    if address.startswith("@"):
        return "Source routes are not accepted"
    if address.count("@") != 1 and not address.startswith('"'):
        return "Address has more than one @"
    if "%" in address.rpartition("@")[0] or "!" in address.rpartition("@")[0]:
        return "Relay tricks (% or ! in the local part) are not accepted"
    m = _MAILBOX.match(address)
    if m is None:
        return "Bad address syntax"
    local = m.group("local")
    if local.startswith('"') and ("@" in local or "%" in local or "!" in local):
        return "Quoted local parts with @, % or ! are not accepted"
    if len(local) > 64 or len(address) > 254:
        return "Address too long"
    return None


@functools.lru_cache(maxsize=8192)
def parse_mailbox(text: str) -> tuple[str, str] | str:
    """("Display Name", "addr@domain") from `addr` or `Name <addr>`, or the problem.
    Cached: the request model checks each address and the composer then needs its parts."""
    if any(c in text for c in "\r\n\x00"):
        return "must not contain CR, LF or NUL"
    text = text.strip()
    if "<" not in text:
        name, address = "", text
    else:
        lt = text.rfind("<")
        if not text.endswith(">") or lt < 0:
            return "expected an address or Name <address>"
        name, address = text[:lt].strip(), text[lt + 1 : -1].strip()
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = re.sub(r"\\(.)", r"\1", name[1:-1])
    problem = address_problem(address)
    if problem is not None:
        return problem
    return name, address
