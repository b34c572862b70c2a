"""Email addresses: which envelope and header addresses mailgate will use.

Deliberately stricter than RFC 5321 allows: no source routes, no %-hacks, no bang
paths, no quoted local parts that hide an @, one @ only. Both ingresses use these rules.
An address is accepted only if it can be sent as it is: every domain label converts to
an A-label of at most 63 octets (IDNA 2008, no mapping, so nothing a resolver or a header
encoder would silently change), and a UTF-8 local part holds no control, format or
space characters (RFC 6531).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata

import idna

# RFC 5321 Dot-atom / quoted local part, kept deliberately strict for relaying.
_ATOM = r"[A-Za-z0-9!#$&'*+/=?^_`{|}~-]+"  # no % and no ! (classic relay tricks)
_LOCAL_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
# UTF-8 atoms: no controls (C0, DEL, C1), which no peer takes and no DSN could carry back
_LOCAL_UTF8 = (
    r"[^\s\x00-\x1f\x7f-\x9f\"(),.:;<>@\[\\\]%!]+"
    r"(?:\.[^\s\x00-\x1f\x7f-\x9f\"(),.:;<>@\[\\\]%!]+)*"
)
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?|xn--[A-Za-z0-9-]+)"
_UTF8_LABEL = r"[^\s\x00-\x2c\x2e\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]+"
_DOMAIN = rf"(?:{_LABEL}|{_UTF8_LABEL})(?:\.(?:{_LABEL}|{_UTF8_LABEL}))+"
_ADDR_LITERAL = r"\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]"
_MAILBOX = re.compile(
    rf"^(?P<local>{_LOCAL_DOT_ATOM}|{_QUOTED}|{_LOCAL_UTF8})@(?P<domain>{_DOMAIN}|{_ADDR_LITERAL})$"
)


_LDH_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# Unicode categories that never belong in an address: controls, format characters (soft
# hyphen, zero-width space, bidi marks), surrogates, private use, unassigned, separators.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


def label_problem(label: str) -> str | None:
    """Why one domain label cannot go on the wire, or None."""
    if label.isascii():
        if not _LDH_LABEL.match(label):
            if len(label) > 63:
                return f"Domain label longer than 63 octets: {label[:20]}..."
            return f"Bad domain label: {label[:63]!a}"
        if label[:4].lower() != "xn--":
            return None
    try:
        a_label = idna.alabel(label.lower())
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        why = str(exc).encode("ascii", "backslashreplace").decode()
        return f"Domain label {label[:63]!a} is not valid IDNA: {why}"
    if len(a_label) > 63:
        return f"Domain label longer than 63 octets once encoded: {label[:20]}..."
    return None


@functools.lru_cache(maxsize=8192)
def domain_problem(domain: str) -> str | None:
    """Why a domain (or [address literal]) cannot be used, or None."""
    if domain.startswith("["):
        literal = domain[1:-1]
        literal = literal[5:] if literal[:5].lower() == "ipv6:" else literal
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            return "Bad address literal"
        return None
    labels = domain.split(".")
    for label in labels:
        problem = label_problem(label)
        if problem is not None:
            return problem
    if len(ascii_domain(domain)) > 253:
        return "Domain longer than 253 octets"
    return None


@functools.lru_cache(maxsize=8192)
def ascii_domain(domain: str) -> str:
    """The domain with every label as an A-label (for DNS and peers without SMTPUTF8).
    Only for domains that passed domain_problem."""
    if domain.isascii():
        return domain
    return ".".join(
        label if label.isascii() else idna.alabel(label.lower()).decode()
        for label in domain.split(".")
    )


def needs_smtputf8(address: str) -> bool:
    """True when the local part is UTF-8: only a peer offering SMTPUTF8 may take it.
    (A UTF-8 domain alone can be sent as A-labels.)"""
    return not address.rpartition("@")[0].isascii()


CACHED_LENGTH = 320  # longer text is never an address: not worth a place in the cache


def address_problem(address: str) -> str | None:
    """Why an envelope address may not be used, or None when it is a plain mailbox.
    Cached: the same senders and recipients come back request after request, and the
    vendor surfaces check an address before mailgate's own model checks it again."""
    if len(address) > CACHED_LENGTH:
        return _address_problem(address)
    return _cached_address_problem(address)


def _address_problem(address: str) -> str | None:
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
    if len(local.encode()) > 64 or len(address.encode()) > 254:
        return "Address too long"
    if not local.isascii() and any(unicodedata.category(c) in _BAD_CATEGORIES for c in local):
        return "Local part contains control, format or space characters"
    return domain_problem(m.group("domain"))


_cached_address_problem = functools.lru_cache(maxsize=8192)(_address_problem)


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
