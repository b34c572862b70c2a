"""Independent DKIM verifiers ("oracles") for the signatures mailgate produces.

Two implementations that share no code with mailgate or with each other: Mail::DKIM (Perl,
through tests/dkim_verify.pl) and dkimpy. Both fetch public keys over real DNS from a server
on 127.0.0.1 at the given port (tests.delivery.peers.start_dns), and both report one Verdict
per DKIM-Signature header field, topmost first.

Results use Mail::DKIM's words: "pass", "fail" (the signature or body hash does not match),
"invalid" (the signature or key record is malformed, or the key is missing), "temperror"
(DNS did not answer), and Mail::DKIM may say "none" or others of its own.
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dkim
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.TXT

VERIFY_PL = Path(__file__).with_name("dkim_verify.pl")
DNS_TIMEOUT = 3.0


@dataclass(frozen=True)
class Verdict:
    result: str
    domain: str
    selector: str
    algorithm: str
    detail: str = ""


class OracleError(RuntimeError):
    """The verifier itself failed (not the signature)."""


def mail_dkim(message: bytes, dns_port: int) -> list[Verdict]:
    """Mail::DKIM::Verifier's verdict on every DKIM-Signature of the message."""
    proc = subprocess.run(
        ["perl", str(VERIFY_PL), str(dns_port)],
        input=message,
        capture_output=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise OracleError(
            f"dkim_verify.pl exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
        )
    verdicts = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        fields = line.split(" ", 4)
        if len(fields) < 4:
            raise OracleError(f"dkim_verify.pl printed {line!r}")
        result, domain, selector, algorithm = fields[:4]
        detail = fields[4] if len(fields) > 4 else ""
        verdicts.append(Verdict(result, domain, selector, algorithm, detail))
    return verdicts


def dkimpy(message: bytes, dns_port: int) -> list[Verdict]:
    """dkimpy's verdict on every DKIM-Signature of the message."""
    headers = dkim.DKIM(message).headers
    signatures = [value for name, value in headers if name.lower() == b"dkim-signature"]
    return [
        _dkimpy_one(message, idx, _signature_tags(value), dns_port)
        for idx, value in enumerate(signatures)
    ]


def _dkimpy_one(message: bytes, idx: int, tags: dict[str, str], dns_port: int) -> Verdict:
    def verdict(result: str, detail: str = "") -> Verdict:
        return Verdict(result, tags.get("d", "-"), tags.get("s", "-"), tags.get("a", "-"), detail)

    def dnsfunc(name: bytes | str, timeout: float = DNS_TIMEOUT) -> bytes | None:
        return _txt(name, dns_port, timeout)

    # a logger of its own, outside the logging tree: dkimpy reports key problems only there
    errors = _Errors()
    logger = logging.Logger("dkimpy-oracle", logging.ERROR)
    logger.addHandler(errors)
    try:
        ok = dkim.DKIM(message, logger=logger, timeout=DNS_TIMEOUT).verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.DKIMException as e:
        # body hash mismatches are failures; malformed signatures or keys are invalid
        result = "fail" if "body hash mismatch" in str(e) else "invalid"
        return verdict(result, f"{type(e).__name__}: {e}")
    if ok:
        return verdict("pass")
    if not errors.messages:
        return verdict("fail", "signature did not verify")
    detail = "; ".join(errors.messages)
    # verify_sig logs and swallows key lookup problems, returning False
    return verdict("temperror" if "DnsTimeoutError" in detail else "invalid", detail)


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _txt(name: bytes | str, dns_port: int, timeout: float) -> bytes | None:
    """The first TXT record at name, its character-strings joined; None when there is none.
    SERVFAIL and timeouts raise dkim.DnsTimeoutError, which dkimpy treats as temporary."""
    qname = name.decode() if isinstance(name, bytes) else name
    query = dns.message.make_query(qname, dns.rdatatype.TXT)
    try:
        response = dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=timeout)
        if response.flags & dns.flags.TC:
            response = dns.query.tcp(query, "127.0.0.1", port=dns_port, timeout=timeout)
    except (dns.exception.Timeout, OSError) as e:
        raise dkim.DnsTimeoutError(f"{qname}: {type(e).__name__}: {e}") from e
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return None
    if rcode != dns.rcode.NOERROR:
        raise dkim.DnsTimeoutError(f"{qname}: {dns.rcode.to_text(rcode)}")
    for rrset in response.answer:
        for rdata in rrset:
            if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
                return b"".join(rdata.strings)
    return None


def _signature_tags(value: bytes) -> dict[str, str]:
    """A DKIM-Signature's tag=value list (RFC 6376 3.2), whitespace removed, lenient."""
    tags: dict[str, str] = {}
    for part in value.decode("utf-8", errors="replace").split(";"):
        name, sep, tag_value = part.partition("=")
        if sep:
            tags.setdefault(name.strip(), re.sub(r"\s+", "", tag_value))
    return tags
