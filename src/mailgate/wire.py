"""Message bytes as they go on the wire: CRLF line ends only (RFC 5321 2.3.8).

Both the door (before signing, so that what is signed is what is sent) and delivery
(data_block) turn a bare CR or LF into CRLF with this one function."""

from __future__ import annotations

import re

_LINE_ENDS = re.compile(rb"\r\n|\r|\n")


def crlf_lines(raw: bytes) -> bytes:
    """raw with every line end a CRLF; raw itself when it already is (one translate and
    one count decide: every CR and LF is in a CRLF iff they number twice the CRLFs)."""
    if len(raw) - len(raw.translate(None, b"\r\n")) == 2 * raw.count(b"\r\n"):
        return raw
    return _LINE_ENDS.sub(b"\r\n", raw)
