"""Normalization and SHA-256 hashing of user data, exactly as each platform asks.

Meta's rules follow Meta's own SDK (``facebook_business/adobjects/serverside/normalize.py``):
every value is trimmed and lowercased first, and a value that already looks like a hash
(64 hex characters) is passed through, so nothing is hashed twice.
Then, per field:

=========  ==============================================================================
em         must look like an email address (else dropped)
ph         digits only, with the country code, no ``+`` and no leading zeros; parsed with
           ``phonenumbers`` using the configured default region when the number is
           national (``(11) 91234-5678`` in ``BR`` -> ``5511912345678``)
fn, ln     trimmed and lowercased
ct, st     letters only (Meta's SDK removes digits, spaces, dots, dashes and brackets)
zp         no whitespace; only the part before ``-`` (``94035-1234`` -> ``94035``)
country    ISO 3166 alpha-2 (``BR``, ``br``, ``Brazil`` -> ``br``), else dropped
ge         ``f`` or ``m`` (``female``/``feminino``/``F`` -> ``f``), else dropped
db         ``YYYYMMDD`` (from ``YYYY-MM-DD``, ``YYYY/MM/DD``, ``YYYYMMDD``), else dropped
=========  ==============================================================================

Values that cannot be normalized are dropped (``None``), never raised: bad input from the
web must not break the host application, and a wrong value only lowers match quality.
IP addresses, user agents, ``fbc``, ``fbp`` and click ids are never hashed or changed.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import re
import unicodedata
from decimal import Decimal
from typing import Any

import phonenumbers

__all__ = [
    "is_hashed",
    "json_number",
    "meta_hash",
    "meta_hash_cached",
    "normalize_city",
    "normalize_country",
    "normalize_date_of_birth",
    "normalize_email",
    "normalize_field",
    "normalize_gender",
    "normalize_ip",
    "normalize_ip_cached",
    "normalize_name",
    "normalize_phone",
    "normalize_zip",
    "phone_e164",
    "public_ip",
    "sha256_hex",
]

_SHA256 = re.compile(r"^[a-f0-9]{64}$")
# Meta's SDK pattern, kept as is so the same addresses pass and fail.
_EMAIL = re.compile(r"^[a-z0-9_.+\-]+@[a-z0-9\-]+\.[a-z0-9\-.]+$")
_COUNTRY_NAMES = {
    "brazil": "br",
    "brasil": "br",
    "united states": "us",
    "united states of america": "us",
    "usa": "us",
    "indonesia": "id",
    "mexico": "mx",
    "méxico": "mx",
    "united kingdom": "gb",
    "uk": "gb",
    "portugal": "pt",
    "spain": "es",
    "españa": "es",
    "argentina": "ar",
    "colombia": "co",
    "chile": "cl",
    "peru": "pe",
    "perú": "pe",
    "india": "in",
    "philippines": "ph",
    "vietnam": "vn",
    "thailand": "th",
    "germany": "de",
    "france": "fr",
    "canada": "ca",
    "australia": "au",
}
_GENDERS = {
    "f": "f",
    "female": "f",
    "woman": "f",
    "feminino": "f",
    "femenino": "f",
    "mulher": "f",
    "mujer": "f",
    "m": "m",
    "male": "m",
    "man": "m",
    "masculino": "m",
    "homem": "m",
    "hombre": "m",
}


def sha256_hex(value: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 bytes of ``value``."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def is_hashed(value: str) -> bool:
    """True for a value that is already a SHA-256 hex digest (64 hex characters, any case).

    Meta's SDK also passes 32-hex (MD5-looking) values through; this does not, because a
    UUID written without dashes is 32 hex characters and must still be hashed.
    """
    return bool(_SHA256.match(value.strip().lower()))


def normalize_email(value: str | None) -> str | None:
    """Trimmed, lowercased email; ``None`` when it does not look like an address."""
    if not value:
        return None
    v = value.strip().lower()
    return v if _EMAIL.match(v) else None


def phone_e164(value: str | None, region: str) -> str | None:
    """The phone as E.164 (``+5511912345678``), or ``None`` if it cannot be understood.

    Numbers written with ``+`` or ``00`` are international; others are read as national
    numbers of ``region`` first, then as international numbers missing their ``+``.
    """
    if not value:
        return None
    raw = value.strip()
    digits = re.sub(r"\D", "", raw)
    if not digits or len(digits) > 17:
        return None
    candidates: list[tuple[str, str | None]] = []
    if raw.startswith("+"):
        candidates.append(("+" + digits, None))
    elif digits.startswith("00"):
        candidates.append(("+" + digits[2:], None))
    else:
        candidates.append((raw, region))
        candidates.append(("+" + digits, None))
    for text, reg in candidates:
        try:
            num = phonenumbers.parse(text, reg)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(num):
            return str(phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164))
    return None


def normalize_phone(value: str | None, region: str = "BR") -> str | None:
    """Digits with the country code, no ``+`` and no leading zeros (Meta's ``ph``).

    Uses ``phonenumbers`` with ``region`` for national numbers. A number it cannot
    validate falls back to Meta's SDK rule: strip separators, a leading ``+`` and up to
    two leading zeros, keep digits.
    """
    if not value:
        return None
    e164 = phone_e164(value, region)
    if e164 is not None:
        return e164[1:]
    v = re.sub(r"[\s\-().]", "", value.strip())
    v = re.sub(r"^\+?0{0,2}", "", v)
    if not v.isdigit() or not 7 <= len(v) <= 15 or v.startswith("0"):
        return None
    return v


def normalize_name(value: str | None) -> str | None:
    """First or last name: trimmed and lowercased (as Meta's SDK does)."""
    if not value:
        return None
    v = unicodedata.normalize("NFC", value).strip().lower()
    return v or None


def normalize_city(value: str | None) -> str | None:
    """City or state: lowercase letters only (``São Paulo`` -> ``sãopaulo``)."""
    if not value:
        return None
    v = unicodedata.normalize("NFC", value).strip().lower()
    v = "".join(c for c in v if c.isalpha())
    return v or None


def normalize_zip(value: str | None) -> str | None:
    """Postal code: lowercase, no whitespace, only the part before ``-``."""
    if not value:
        return None
    v = re.sub(r"\s", "", value.strip().lower()).split("-")[0]
    return v or None


def _valid_regions() -> frozenset[str]:
    regions = {r.lower() for r in phonenumbers.SUPPORTED_REGIONS}
    regions.discard("001")
    return frozenset(regions)


_REGIONS = _valid_regions()


def normalize_country(value: str | None) -> str | None:
    """ISO 3166 alpha-2, lowercase (``BR``/``br``/``Brazil`` -> ``br``); else ``None``."""
    if not value:
        return None
    v = value.strip().lower()
    if v in _COUNTRY_NAMES:
        return _COUNTRY_NAMES[v]
    v = re.sub(r"[^a-z]", "", v)
    return v if len(v) == 2 and v in _REGIONS else None


def normalize_gender(value: str | None) -> str | None:
    """``f`` or ``m``; anything else is dropped."""
    if not value:
        return None
    return _GENDERS.get(value.strip().lower())


def normalize_date_of_birth(value: str | None) -> str | None:
    """``YYYYMMDD`` from ISO-like input (``1990-05-17``, ``1990/05/17``, ``19900517``)."""
    if not value:
        return None
    v = value.strip()
    if v.isdigit():
        m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", v)
    else:
        m = re.fullmatch(r"(\d{4})([-/.])(\d{1,2})\2(\d{1,2})", v)
    if m is None:
        return None
    year, month, day = m.group(1), m.groups()[-2], m.groups()[-1]
    try:
        d = datetime.date(int(year), int(month), int(day))
    except ValueError:
        return None
    if d.year < 1900 or d > datetime.date.today():
        return None
    return d.strftime("%Y%m%d")


def normalize_ip(value: str | None) -> str | None:
    """A syntactically valid IP address, unchanged apart from trimming; else ``None``."""
    if not value:
        return None
    v = value.strip()
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return None
    return v


def public_ip(value: str | None) -> str | None:
    """:func:`normalize_ip` for a public address only (not private, loopback, link-local...):
    behind an unconfigured proxy or in development the peer is the proxy's or this host's."""
    v = normalize_ip(value)
    if v is None:
        return None
    addr = ipaddress.ip_address(v)
    mapped = getattr(addr, "ipv4_mapped", None)
    return v if (mapped or addr).is_global else None


def normalize_field(field: str, value: str | None, region: str = "BR") -> str | None:
    """Normalize one Meta user-data field (``em``, ``ph``, ``fn``, ... ``external_id``)."""
    if value is None:
        return None
    v = value.strip()
    if not v:
        return None
    if is_hashed(v):
        return v.lower()
    if field == "em":
        return normalize_email(v)
    if field == "ph":
        return normalize_phone(v, region)
    if field in ("fn", "ln"):
        return normalize_name(v)
    if field in ("ct", "st"):
        return normalize_city(v)
    if field == "zp":
        return normalize_zip(v)
    if field == "country":
        return normalize_country(v)
    if field == "ge":
        return normalize_gender(v)
    if field == "db":
        return normalize_date_of_birth(v)
    return v.lower()


def meta_hash(field: str, value: str | None, region: str = "BR") -> str | None:
    """Normalize then SHA-256 one field; an already hashed value is returned as is."""
    v = normalize_field(field, value, region)
    if v is None:
        return None
    return v if is_hashed(v) else sha256_hex(v)


@functools.lru_cache(maxsize=4096)
def _meta_hash_lru(field: str, value: str, region: str) -> str | None:
    return meta_hash(field, value, region)


def meta_hash_cached(field: str, value: str | None, region: str = "BR") -> str | None:
    """:func:`meta_hash` through a bounded cache keyed by the raw value.

    The same customers convert again and again, and phone parsing alone costs tens of
    microseconds in ``track()``. Only hashes and the values that produced them are kept,
    in this process. The date of birth is not cached: its validity depends on today.
    """
    if value is None:
        return None
    if field == "db":
        return meta_hash(field, value, region)
    return _meta_hash_lru(field, value, region)


@functools.lru_cache(maxsize=1024)
def normalize_ip_cached(value: str | None) -> str | None:
    """:func:`normalize_ip` through a bounded cache (visitors come back from one address)."""
    return normalize_ip(value)


def json_number(value: Any) -> int | float:
    """A Decimal/str amount as a JSON number: int when whole, else float."""
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    if d == d.to_integral_value() and abs(d) < 2**53:
        return int(d)
    return float(d)
