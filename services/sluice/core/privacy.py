"""PII redaction for everything the suite records (`privacy.redact_pii`, off by default).

One function, `redact`, used by every recorder (docs/security.md, "Privacy"): span
attributes, events and status messages before a service exports them
(core/telemetry/span_export.py) and again when the telemetry service receives them (so
Envoy's spans are covered too), answers written to the response cache
(router/fallback.py) and log records (`RedactingLogFilter`, core/telemetry/logging.py).

What is found, and the typed placeholder that replaces it:

- `<API_KEY>`: known key prefixes (sk-, AKIA, ghp_, xox?-, AIza, glpat-), `Bearer x`,
  JWTs, and 32+ character tokens mixing upper case, lower case and digits;
- `<EMAIL_ADDRESS>`: the usual local@domain.tld shape;
- `<CREDIT_CARD>`: 13-19 digits starting 2-6 (the card networks' ranges), spaces or
  dashes between, passing the Luhn check;
- `<IP_ADDRESS>`: IPv4 and IPv6, validated by `ipaddress`; loopback is kept (it names
  no one);
- `<PHONE_NUMBER>`: `+` and 8-15 digits, or the North American (555) 123-4567 shape.

Why our own patterns and not a library: Presidio needs a spaCy language model that has
to be downloaded from outside the package registries, and scrubadub (last release 2023)
pins textblob 0.15 and pulls scikit-learn; both look for names and addresses in prose
with NER, which is slow for a per-span path and not what a trace attribute holds. The five
structured kinds above need a regular expression and a check each (Luhn, `ipaddress`).
Trace and span ids (lowercase hex) and request ids (UUIDs) are not matched.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

EMAIL = "<EMAIL_ADDRESS>"
PHONE = "<PHONE_NUMBER>"
CARD = "<CREDIT_CARD>"
IP = "<IP_ADDRESS>"
API_KEY = "<API_KEY>"


class PrivacySettings(BaseModel):
    """What the suite records about people (docs/security.md, "Privacy")."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    redact_pii: bool = False
    """Replace e-mail addresses, phone numbers, payment card numbers, IP addresses and
    API-key-like tokens with typed placeholders (`<EMAIL_ADDRESS>`...) in everything
    recorded: span attributes and events (exported and received), cached answers and
    log records. Off by default: it costs CPU per recorded string, and a cached answer is
    then served redacted. User ids are recorded as given: use opaque ones."""


_KEY = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{8,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{30,}|glpat-[A-Za-z0-9_-]{16,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
# 32+ characters of token alphabet; only the ones that mix cases and digits are keys
# (lowercase hex ids and words are not).
_LONG_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{32,}(?![A-Za-z0-9_-])")
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<!\d)(?<!\d\.)[2-6](?:[ -]?\d){12,18}(?!\.?\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+])\+\d(?:[ ().-]{0,2}\d){7,14}(?!\d)"
    r"|(?<![\w(])(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\d)"
)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a card number (digits only)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _key_like(match: re.Match[str]) -> str:
    token = match.group()
    mixed = (
        any(c.isupper() for c in token)
        and any(c.islower() for c in token)
        and any(c.isdigit() for c in token)
    )
    return API_KEY if mixed else token


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group())
    return CARD if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group()


def _ip(match: re.Match[str]) -> str:
    try:
        address = ipaddress.ip_address(match.group())
    except ValueError:
        return match.group()
    return match.group() if address.is_loopback or address.is_unspecified else IP


_PASSES: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (_BEARER, r"\1 " + API_KEY),
    (_KEY, API_KEY),
    (_LONG_TOKEN, _key_like),
    (_EMAIL, EMAIL),
    (_CARD, _card),
    (_IPV4, _ip),
    (_IPV6, _ip),
    (_PHONE, PHONE),
)
# A string with none of these characters holds nothing the passes could find.
_MAYBE = re.compile(r"[0-9@]|[A-Za-z0-9_-]{32}|(?i:bearer|basic)\s")


def redact(text: str) -> str:
    """`text` with every PII kind above replaced by its placeholder."""
    if not _MAYBE.search(text):
        return text
    for pattern, replacement in _PASSES:
        text = pattern.sub(replacement, text)
    return text


class RedactingLogFilter(logging.Filter):
    """Redacts a record's message and exception text before any handler formats it.

    The message is formatted here (`getMessage`) and its arguments dropped, so a value
    passed as an argument is redacted too; the exception is kept only as its redacted
    text (`exc_text`, which the JSON formatter prints).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        # Idempotent (placeholders hold nothing to find), so a record passing through
        # two handlers is simply redacted twice.
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = record.exc_text or logging.Formatter().formatException(
                record.exc_info
            )
            # Handlers that read the exception object (OTLP's) would see it unredacted.
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
