"""The Authentication-Results header field (RFC 8601): building ours, removing forged ones.

`build_authentication_results(hostname, spf=…, dkim=…, dmarc=…, iprev=…)` renders the results
of our checks as one header field, bytes ending in CRLF, one method result per folded line:

    Authentication-Results: mx.example.org;
    \tiprev=pass policy.iprev=192.0.2.1 (mail.example.com);
    \tspf=pass smtp.mailfrom=alice@example.com;
    \tdkim=pass header.d=example.com header.s=sel header.a=rsa-sha256 header.b=AbCdEfGh;
    \tdmarc=pass (p=reject dis=none) header.from=example.com

With no results at all it is `Authentication-Results: mx.example.org; none` (section 2.2).
Properties are those of the IANA registry (section 2.3, 2.7): smtp.mailfrom / smtp.helo for SPF,
header.d / header.i / header.s / header.a / header.b for DKIM, header.from for DMARC,
policy.iprev for iprev; values that are not RFC 2045 tokens are quoted.

`strip_our_results(lines, hostname)` removes incoming Authentication-Results fields whose
authserv-id is our hostname (section 5: a receiver MUST remove or rename them before adding its
own, or a sender could forge our verdicts). The authserv-id is matched case-insensitively,
after any comments; fields for other authserv-ids are kept.

Written here instead of with the `authres` package: building needs bytes, folding and a strict
escape of every value, stripping needs a lenient parse of possibly hostile input; both are a
page of code. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloudmail.policy.dkim import DkimResult
    from cloudmail.policy.dmarc import DmarcResult
    from cloudmail.policy.iprev import IprevResult
    from cloudmail.policy.spf import SpfResult

FIELD_NAME = "Authentication-Results"
MAX_REASON = 120
"""Characters of a reason= text kept; the rest is cut (the header is not a log)."""

_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")  # RFC 2045 section 5.1
_LOCAL_PART = re.compile(r"^[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+(?:\.[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+)*$")
_DOMAIN = re.compile(r"^[0-9A-Za-z_](?:[0-9A-Za-z_\-.]*[0-9A-Za-z])?$")
_FIELD = re.compile(rb"^authentication-results[ \t]*:", re.IGNORECASE)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def _value(text: str) -> str:
    """`text` as an RFC 8601 value: a token, or a quoted-string with `"` and `\\` escaped."""
    text = _UNSAFE.sub(" ", text)
    if _TOKEN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _address(address: str) -> str:
    """A pvalue for an address: `local@domain` when both parts are plain, else quoted."""
    local, at, domain = address.rpartition("@")
    if at and (not local or _LOCAL_PART.match(local)) and _DOMAIN.match(domain):
        return address
    return _value(address)


def _domain(domain: str) -> str:
    return domain if _DOMAIN.match(domain) else _value(domain)


def _comment(text: str) -> str:
    """`text` as a comment, parentheses and backslashes escaped (RFC 5322 section 3.2.2)."""
    text = _UNSAFE.sub(" ", text)
    return "(" + re.sub(r"([()\\])", r"\\\1", text) + ")"


def _reason(reason: str | None) -> list[str]:
    if not reason:
        return []
    return [f"reason={_value(reason[:MAX_REASON])}"]


def spf_resinfo(spf: SpfResult) -> str:
    """`spf=<result> smtp.mailfrom=<sender>`, or `smtp.helo=<name>` for the null sender
    (RFC 8601 section 2.7.2)."""
    parts = [f"spf={spf.status}"]
    if spf.status in ("temperror", "permerror"):
        parts += _reason(spf.detail)
    if spf.identity == "helo":
        parts.append(f"smtp.helo={_domain(spf.domain)}")
    else:
        parts.append(f"smtp.mailfrom={_address(spf.sender)}")
    return " ".join(parts)


def dkim_resinfo(dkim: DkimResult) -> str:
    """`dkim=<result> header.d=… header.i=… header.s=… header.a=… header.b=…` (RFC 8601
    section 2.7.1; header.b is the signature prefix of RFC 6008)."""
    parts = [f"dkim={dkim.status}"]
    if dkim.status not in ("pass", "none"):
        parts += _reason(dkim.reason)
    if dkim.domain:
        parts.append(f"header.d={_domain(dkim.domain)}")
    if dkim.identity:
        parts.append(f"header.i={_address(dkim.identity)}")
    if dkim.selector:
        parts.append(f"header.s={_value(dkim.selector)}")
    if dkim.algorithm:
        parts.append(f"header.a={_value(dkim.algorithm)}")
    if dkim.signature_prefix:
        parts.append(f"header.b={_value(dkim.signature_prefix)}")
    return " ".join(parts)


def dmarc_resinfo(dmarc: DmarcResult) -> str:
    """`dmarc=<result> (p=<policy> dis=<disposition>) header.from=<domain>` (RFC 7489
    section 11.2)."""
    parts = [f"dmarc={dmarc.status}"]
    if dmarc.policy is not None:
        parts.append(_comment(f"p={dmarc.policy} dis={dmarc.disposition}"))
    if dmarc.status in ("temperror", "permerror"):
        parts += _reason(dmarc.detail)
    if dmarc.from_domain:
        parts.append(f"header.from={_domain(dmarc.from_domain)}")
    return " ".join(parts)


def iprev_resinfo(iprev: IprevResult) -> str:
    """`iprev=<result> policy.iprev=<ip> (<name>)` (RFC 8601 section 3)."""
    parts = [f"iprev={iprev.status}"]
    if iprev.status in ("temperror", "permerror") and iprev.detail:
        parts += _reason(iprev.detail)
    parts.append(f"policy.iprev={_value(iprev.ip)}")
    name = iprev.name or (iprev.ptr_names[0] if iprev.ptr_names else None)
    if name:
        parts.append(_comment(name))
    return " ".join(parts)


def build_authentication_results(hostname: str, *, iprev: IprevResult | None = None,
                                 spf: SpfResult | None = None,
                                 dkim: Sequence[DkimResult] = (),
                                 dmarc: DmarcResult | None = None) -> bytes:
    """Our Authentication-Results header field (RFC 8601 section 2.2) for the given results, as
    bytes ending in CRLF, stamped with `hostname` as the authserv-id."""
    resinfos = []
    if iprev is not None:
        resinfos.append(iprev_resinfo(iprev))
    if spf is not None:
        resinfos.append(spf_resinfo(spf))
    resinfos += [dkim_resinfo(d) for d in dkim]
    if dmarc is not None:
        resinfos.append(dmarc_resinfo(dmarc))
    head = f"{FIELD_NAME}: {_value(hostname.rstrip('.'))}"
    if not resinfos:
        return f"{head}; none\r\n".encode()
    return (head + ";\r\n\t" + ";\r\n\t".join(resinfos) + "\r\n").encode("utf-8")


def authserv_id(field: bytes) -> str | None:
    """The authserv-id of an Authentication-Results field (name and value, possibly folded),
    lowercased without a trailing dot; None when there is none to be found."""
    match = _FIELD.match(field)
    if not match:
        return None
    text = field[match.end():].decode("utf-8", "replace")
    i = 0
    while i < len(text):  # skip CFWS: whitespace and (nested) comments
        if text[i] in " \t\r\n":
            i += 1
        elif text[i] == "(":
            depth = 0
            while i < len(text):
                if text[i] == "\\":
                    i += 1
                elif text[i] == "(":
                    depth += 1
                elif text[i] == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    rest = text[i:]
    if rest.startswith('"'):
        quoted = re.match(r'"((?:[^"\\]|\\.)*)"', rest, re.DOTALL)
        value = re.sub(r"\\(.)", r"\1", quoted.group(1)) if quoted else None
    else:
        token = re.match(r"[^\s;()\"<>@,:\\/\[\]?=]+", rest)
        value = token.group(0) if token else None
    return value.strip().lower().rstrip(".") if value else None


def _fields(lines: Iterable[bytes]) -> list[list[bytes]]:
    """Physical header lines grouped into fields (a line starting with space or tab continues
    the field before it, RFC 5322 section 2.2.3)."""
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return fields


def strip_our_results(header_block_lines: Iterable[bytes], hostname: str) -> list[bytes]:
    """The header lines without any Authentication-Results field whose authserv-id is
    `hostname` (case-insensitive, trailing dot ignored) — RFC 8601 section 5. Lines are kept
    byte for byte, folding included; other fields and other authserv-ids are untouched."""
    ours = hostname.strip().lower().rstrip(".")
    kept: list[bytes] = []
    for field in _fields(header_block_lines):
        if authserv_id(b"".join(field)) != ours:
            kept.extend(field)
    return kept
