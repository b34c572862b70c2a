"""What a sending domain publishes in DNS and how a found answer is judged. Pure.

Records, each with an id its check is kept under:
  dkim:<selector>    TXT <selector>._domainkey.<domain>  v=DKIM1; k=rsa|ed25519; p=...
  spf                TXT <envelope domain>                 v=spf1 <mechanisms> ~all
  dmarc              TXT _dmarc.<domain>                   v=DMARC1; p=none; rua=mailto:...
  return_path_mx     MX  <label>.<domain>                  10 <server hostname>   (optional)
  return_path_spf    TXT <label>.<domain>                  v=spf1 <mechanisms> ~all (optional)

A domain is a sending domain when, for each DKIM algorithm, a key not retired has its
record verified. SPF, DMARC and the return path are reported, not required: an operator
may already publish stricter ones, and receivers judge them, not mailgate."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mailgate.models import DkimAlgorithm, DkimKey, Domain, RecordCheck, RecordStatus

DKIM_KEY_TYPE = {DkimAlgorithm.RSA: "rsa", DkimAlgorithm.ED25519: "ed25519"}


@dataclass(frozen=True, slots=True)
class Policy:
    """The settings records are made from (config `domains` and `server.hostname`)."""

    hostname: str  # the server: SPF's a: when no addresses are given, the return path's MX
    spf_ip: tuple[str, ...] = ()  # addresses mail leaves from (ip4:/ip6:)
    spf_include: str = ""  # or a provider's SPF record to include
    dmarc_report: str = ""  # rua address; "": dmarc-reports@<domain>
    return_path: str = ""  # label of the return-path subdomain; "": none


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    purpose: str  # dkim | spf | dmarc | return_path
    type: str  # TXT | MX
    name: str
    value: str
    selector: str = ""
    algorithm: str = ""
    retired: bool = False  # a retired key's record: kept visible until the domain drops it


def dkim_value(key: DkimKey) -> str:
    return f"v=DKIM1; k={DKIM_KEY_TYPE[key.algorithm]}; p={key.public_key}"


def spf_value(policy: Policy) -> str:
    mechanisms = [f"ip6:{a}" if ":" in a else f"ip4:{a}" for a in policy.spf_ip]
    if policy.spf_include:
        mechanisms.append(f"include:{policy.spf_include}")
    if not mechanisms:
        mechanisms.append(f"a:{policy.hostname}")
    return " ".join(["v=spf1", *mechanisms, "~all"])


def records(domain: Domain, policy: Policy) -> list[Record]:
    out = [
        Record(
            f"dkim:{k.selector}",
            "dkim",
            "TXT",
            f"{k.selector}._domainkey.{domain.name}",
            dkim_value(k),
            k.selector,
            k.algorithm.value,
            k.retired_at is not None,
        )
        for k in domain.keys
    ]
    spf = spf_value(policy)
    report = policy.dmarc_report or f"dmarc-reports@{domain.name}"
    out.append(Record("spf", "spf", "TXT", domain.name, spf))
    out.append(
        Record(
            "dmarc",
            "dmarc",
            "TXT",
            f"_dmarc.{domain.name}",
            f"v=DMARC1; p=none; rua=mailto:{report}",
        )
    )
    if policy.return_path:
        bounce = f"{policy.return_path}.{domain.name}"
        out.append(Record("return_path_mx", "return_path", "MX", bounce, f"10 {policy.hostname}"))
        out.append(Record("return_path_spf", "return_path", "TXT", bounce, spf))
    return out


# -- judging what DNS answered ----------------------------------------------------------


def tags(txt: str) -> dict[str, str]:
    """`k=v; k=v` tags (DKIM, DMARC), names lower-cased, whitespace inside values gone."""
    out: dict[str, str] = {}
    for part in txt.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            out[name.strip().lower()] = "".join(value.split())
    return out


def judge(record: Record, found: Sequence[str]) -> RecordStatus:
    """VERIFIED, MISSING or MISMATCHED for what DNS answered (TXT texts with their
    character-strings joined, or MX as `preference host`)."""
    if record.purpose == "dkim":
        want = tags(record.value)
        keys = [tags(t) for t in found if tags(t).get("p")]
        if not found:
            return RecordStatus.MISSING
        ok = any(k.get("p") == want["p"] and k.get("k", "rsa").lower() == want["k"] for k in keys)
        return RecordStatus.VERIFIED if ok else RecordStatus.MISMATCHED
    if record.type == "MX":
        hosts = {f.split()[-1].rstrip(".").lower() for f in found if f.split()}
        if not found:
            return RecordStatus.MISSING
        want_host = record.value.split()[-1].lower()
        return RecordStatus.VERIFIED if want_host in hosts else RecordStatus.MISMATCHED
    if record.purpose == "dmarc":
        # RFC 7489 6.4: the record starts with exactly "v=DMARC1"
        dmarc = [t for t in found if re.match(r"v\s*=\s*DMARC1\s*(;|$)", t)]
        if not found:
            return RecordStatus.MISSING
        # RFC 7489 6.6.3: more than one record, or none, means no policy
        return RecordStatus.VERIFIED if len(dmarc) == 1 else RecordStatus.MISMATCHED
    spf = [t for t in found if t.lower().split()[:1] == ["v=spf1"]]
    if not spf:
        return RecordStatus.MISSING
    # RFC 7208 4.5: two SPF records are a permanent error
    have = {m.lower() for m in spf[0].split()} if len(spf) == 1 else set()
    need = {m.lower() for m in record.value.split()[1:-1]}
    return RecordStatus.VERIFIED if need <= have else RecordStatus.MISMATCHED


def checked(
    previous: RecordCheck | None, status: RecordStatus, found: Sequence[str]
) -> RecordCheck:
    """The new check of a record. DNS failing (UNKNOWN) keeps what was known: a verified
    domain does not stop signing because its resolver had a bad minute."""
    if status is RecordStatus.UNKNOWN:
        was_ok = previous.ok if previous is not None else False
        return RecordCheck(status, previous.found if previous else (), was_ok)
    return RecordCheck(status, tuple(found), status is RecordStatus.VERIFIED)


def signing_keys(domain: Domain) -> list[DkimKey]:
    """Per algorithm, the newest key not retired whose record counts as verified (after
    a rotation the old keys sign until the new ones are found in DNS)."""
    chosen: dict[DkimAlgorithm, DkimKey] = {}
    for key in sorted(domain.keys, key=lambda k: k.created_at):
        check = domain.checks.get(f"dkim:{key.selector}")
        if key.retired_at is None and check is not None and check.ok:
            chosen[key.algorithm] = key
    return list(chosen.values())


def is_sending(domain: Domain) -> bool:
    return {k.algorithm for k in signing_keys(domain)} == set(DkimAlgorithm)


def with_checks(domain: Domain, checks: dict[str, RecordCheck], now: float) -> Domain:
    return dataclasses.replace(domain, checks=checks, checked_at=now)
