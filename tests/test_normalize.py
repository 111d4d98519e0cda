"""Normalization and hashing, checked against Meta's published examples and SDK rules."""

from __future__ import annotations

import hashlib
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracking_mw._normalize import (
    is_hashed,
    json_number,
    meta_hash,
    normalize_city,
    normalize_country,
    normalize_date_of_birth,
    normalize_email,
    normalize_field,
    normalize_gender,
    normalize_ip,
    normalize_phone,
    normalize_zip,
    phone_e164,
    sha256_hex,
)

# Meta's "Customer Information Parameters" page: input -> expected SHA-256 output.
META_PUBLISHED = [
    (
        "em",
        "John_Smith@gmail.com",
        "US",
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
    ),
    (
        "ph",
        "(650)555-1212",
        "US",
        "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
    ),
    ("fn", "Mary", "US", "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec"),
    ("fn", "Valéry", "US", "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c"),
    ("ln", "정", "US", "8fa8cd9c440be61d0151429310034083132b35975c4bea67fdd74158eb51db14"),
    ("country", "US", "US", "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"),
    ("db", "1997-02-16", "US", "01acdbf6ec7b4f478a225f1a246e5d6767eeab1a7ffa17f025265b5b94f40f0c"),
]


@pytest.mark.parametrize(("field", "raw", "region", "expected"), META_PUBLISHED)
def test_meta_published_examples(field: str, raw: str, region: str, expected: str) -> None:
    assert meta_hash(field, raw, region) == expected


@pytest.mark.parametrize(
    ("field", "raw", "normalized"),
    [
        ("em", "  John.Doe+tag@Example.COM ", "john.doe+tag@example.com"),
        ("em", "not-an-email", None),
        ("fn", "  JOHN ", "john"),
        ("ct", "Menlo Park", "menlopark"),
        ("ct", "São Paulo", "sãopaulo"),
        ("ct", "St. Louis (MO) 2", "stlouismo"),
        ("st", " CA ", "ca"),
        ("zp", "94025-1234", "94025"),
        ("zp", " 01310 100 ", "01310100"),
        ("zp", "SW1A 1AA", "sw1a1aa"),
        ("country", "BR", "br"),
        ("country", " u.s. ", "us"),
        ("country", "Brazil", "br"),
        ("country", "XX", None),
        ("country", "Brasilia", None),
        ("ge", "Female", "f"),
        ("ge", "M", "m"),
        ("ge", "masculino", "m"),
        ("ge", "other", None),
        ("db", "19900517", "19900517"),
        ("db", "1990/5/7", "19900507"),
        ("db", "1990-02-30", None),
        ("db", "17/05/1990", None),
        ("external_id", " User-42 ", "user-42"),
    ],
)
def test_normalize_field(field: str, raw: str, normalized: str | None) -> None:
    assert normalize_field(field, raw, "BR") == normalized


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("(11) 91234-5678", "BR", "5511912345678"),
        ("+55 11 91234-5678", "US", "5511912345678"),
        ("005511912345678", "US", "5511912345678"),
        ("5511912345678", "BR", "5511912345678"),
        ("+1 (650) 555-1212", "BR", "16505551212"),
        ("650-555-1212", "US", "16505551212"),
        ("+44 844 412 4653", "BR", "448444124653"),
        ("0812-3456-7890", "ID", "6281234567890"),
        ("abc", "BR", None),
        ("", "BR", None),
    ],
)
def test_phone_with_country_code(raw: str, region: str, expected: str | None) -> None:
    assert normalize_phone(raw, region) == expected


def test_phone_e164_keeps_plus() -> None:
    assert phone_e164("(11) 91234-5678", "BR") == "+5511912345678"
    assert phone_e164("12", "BR") is None


def test_never_hash_twice() -> None:
    once = meta_hash("em", "john_smith@gmail.com")
    assert once is not None
    assert meta_hash("em", once) == once
    assert meta_hash("em", once.upper()) == once
    assert meta_hash("ph", once) == once
    assert is_hashed(once) and not is_hashed("abc")
    # A dashless UUID is 32 hex characters: still hashed (unlike an MD5 pass-through).
    uuid_hex = "0123456789abcdef0123456789abcdef"
    assert meta_hash("external_id", uuid_hex) == sha256_hex(uuid_hex)


def test_empty_and_invalid_values_are_dropped_not_raised() -> None:
    for field in ("em", "ph", "fn", "ln", "ct", "st", "zp", "country", "ge", "db", "external_id"):
        assert meta_hash(field, None) is None
        assert meta_hash(field, "   ") is None


def test_ip_is_validated_not_hashed() -> None:
    assert normalize_ip(" 2001:db8::1 ") == "2001:db8::1"
    assert normalize_ip("203.0.113.7") == "203.0.113.7"
    assert normalize_ip("not-an-ip") is None
    assert normalize_ip(None) is None


def test_small_helpers() -> None:
    assert normalize_email(None) is None
    assert normalize_city("123") is None
    assert normalize_zip("-") is None
    assert normalize_country(None) is None
    assert normalize_gender(None) is None
    assert normalize_date_of_birth("1850-01-01") is None
    assert json_number(Decimal("10")) == 10 and isinstance(json_number(Decimal("10")), int)
    assert json_number(Decimal("10.28")) == 10.28
    assert json_number("19.99") == 19.99


@given(st.emails())
def test_email_hash_is_sha256_of_trimmed_lowercase(email: str) -> None:
    got = meta_hash("em", f"  {email.upper()} ")
    norm = normalize_email(email)
    if norm is None:
        assert got is None
    else:
        assert got == hashlib.sha256(norm.encode()).hexdigest()


@given(st.text(max_size=40))
def test_normalizers_never_raise(text: str) -> None:
    for field in ("em", "ph", "fn", "ct", "zp", "country", "ge", "db", "external_id"):
        v = meta_hash(field, text, "BR")
        assert v is None or is_hashed(v)
