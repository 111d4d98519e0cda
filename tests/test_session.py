"""session.py: signing, rotation, expiry, bad cookies as absent, the size budget, the cache."""

from __future__ import annotations

import base64
import logging
import random
import time

import pytest
from itsdangerous import URLSafeTimedSerializer

from tracking_mw.attribution import Attribution, ClientContext, Touch
from tracking_mw.config import MAX_SET_COOKIE_BYTES, Settings
from tracking_mw.session import SALT, SessionCodec

KEY_A = "a" * 32
KEY_B = "b" * 32


def settings(**kw: object) -> Settings:
    base: dict[str, object] = {"secret_key": KEY_A, "outbox": "memory://"}
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def sample(now: int | None = None) -> Attribution:
    now = now or int(time.time())
    return Attribution(
        visitor_id="visitor-1",
        touches={
            "kwai": Touch(
                platform="kwai",
                click_id="K+1/=x",
                pixel_id="P1",
                first_seen=now - 10,
                last_seen=now,
                landing_url="https://shop/?click_id=K%2B1",
                utm={"utm_source": "kwai"},
            ),
            "meta": Touch(
                platform="meta",
                click_id="IwAR1",
                first_seen=now,
                last_seen=now,
                extra={"fbc": "fb.1.1.IwAR1", "fbp": "fb.1.1.5"},
            ),
        },
        client=ClientContext(ip="203.0.113.9", user_agent="UA-SECRET", url="https://shop/"),
    )


def test_roundtrip_without_client_context() -> None:
    codec = SessionCodec(settings())
    a = sample()
    value = codec.encode(a)
    back = codec.decode(value)
    assert back is not None
    assert back.visitor_id == a.visitor_id and dict(back.touches) == dict(a.touches)
    assert back.client == ClientContext()
    # Nothing about the client is in the (readable) payload.
    raw = value.split(".")
    payload = raw[1] if value.startswith(".") else raw[0]
    assert "203.0.113.9" not in value and "UA-SECRET" not in value
    assert payload  # compressed or not, it is base64url


def test_set_cookie_attributes() -> None:
    codec = SessionCodec(settings(cookie_domain=".shop.example", cookie_max_age=3600))
    header, stored = codec.set_cookie(sample()) or ("", None)
    assert header.startswith("_tmw=")
    assert "; Max-Age=3600; Path=/; Domain=.shop.example; HttpOnly; Secure; SameSite=Lax" in header
    assert stored is not None and set(stored.touches) == {"kwai", "meta"}
    plain = SessionCodec(settings(cookie_secure=False, cookie_samesite="strict"))
    header2, _ = plain.set_cookie(sample()) or ("", None)
    assert "Secure" not in header2 and "SameSite=Strict" in header2


def test_key_rotation() -> None:
    old = SessionCodec(settings(secret_key=[KEY_B]))
    value = old.encode(sample())
    rotated = SessionCodec(settings(secret_key=[KEY_A, KEY_B]))
    assert rotated.decode(value) is not None  # accepted with an older key
    new_value = rotated.encode(sample())
    assert SessionCodec(settings(secret_key=[KEY_A])).decode(new_value) is not None  # newest signs
    assert old.decode(new_value) is None
    assert SessionCodec(settings(secret_key=[KEY_A])).decode(value) is None  # key removed


def test_expired_and_future_cookies_are_absent() -> None:
    codec = SessionCodec(settings(cookie_max_age=100))
    now = int(time.time())
    value = codec.encode(sample(now))
    assert codec.decode(value, now + 100) is not None
    assert codec.decode(value, now + 101) is None
    assert codec.decode(value, now - 5) is None  # signed "in the future"
    # The cache must not bypass the age check.
    assert codec.decode(value, now) is not None
    assert codec.decode(value, now + 1000) is None


def test_future_dated_signature_rejected_uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = SessionCodec(settings())
    monkeypatch.setattr(codec._signer, "get_timestamp", lambda: int(time.time()) + 3600)
    forged = codec.encode(sample())
    monkeypatch.undo()
    assert SessionCodec(settings()).decode(forged) is None
    assert codec.decode(forged) is None


def test_other_salt_or_serializer_rejected() -> None:
    other = URLSafeTimedSerializer([KEY_A], salt=SALT).dumps({"k": 1, "v": "x", "t": []})
    assert SessionCodec(settings()).decode(other) is None


def test_old_touches_pruned_by_window() -> None:
    codec = SessionCodec(settings(cookie_max_age=1000))
    now = int(time.time())
    a = Attribution(
        visitor_id="v",
        touches={
            "kwai": Touch(platform="kwai", click_id="old", first_seen=now - 5000, last_seen=now),
            "rokt": Touch(platform="rokt", click_id="new", first_seen=now, last_seen=now),
        },
    )
    back = codec.decode(codec.encode(a), now)
    assert back is not None and set(back.touches) == {"rokt"}


def _flip(value: str, i: int) -> str:
    return value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]


def _bad_values(good: str) -> list[str]:
    body = good.lstrip(".")
    return [
        _flip(good, len(good) // 3),  # tampered payload
        _flip(good, len(good) - 10),  # tampered signature
        good[: len(good) // 2],  # truncated
        good.replace(".", "", 1),
        "not base64 !!!",
        "%%%.%%%.%%%",
        ".." + body,
        "x" * 5000,  # oversize
        "",
        base64.urlsafe_b64encode(b'{"k":1}').decode() + ".AAAA.BBBB",
    ]


def test_bad_cookies_are_absent() -> None:
    codec = SessionCodec(settings())
    good = codec.encode(sample())
    for bad in _bad_values(good):
        assert codec.decode(bad) is None, bad[:40]


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"k": 2, "v": "x", "t": []},
        {"k": 1, "v": "", "t": []},
        {"k": 1, "v": 5, "t": []},
        {"k": 1, "v": "x", "t": {}},
        {"k": 1, "v": "x", "t": [["kwai"]]},
        {"k": 1, "v": "x", "t": [["myspace", "c", None, 1, 1, None, 0, 0]]},
        {"k": 1, "v": "x", "t": [["kwai", 5, None, 1, 1, None, 0, 0]]},
        {"k": 1, "v": "x", "t": [["kwai", "c", None, "1", 1, None, 0, 0]]},
        {"k": 1, "v": "x", "t": [["kwai", "c", None, 1, 1, None, [1], 0]]},
        {"k": 1, "v": "x", "t": [["kwai", "c", None, 1, 1, None, 0, {"fbc": 3}]]},
    ],
)
def test_wrong_json_shape_is_absent(payload: object) -> None:
    codec = SessionCodec(settings())
    value = codec._dump(payload)
    assert codec.decode(value) is None


def test_unknown_extra_keys_dropped() -> None:
    codec = SessionCodec(settings())
    now = int(time.time())
    value = codec._dump(
        {"k": 1, "v": "x", "t": [["kwai", "c", None, now, now, None, 0, {"fbp": "f", "ip": "1"}]]}
    )
    got = codec.decode(value)
    assert got is not None and dict(got.touches["kwai"].extra) == {"fbp": "f"}


def test_size_budget_sheds_oldest_touches(caplog: pytest.LogCaptureFixture) -> None:
    codec = SessionCodec(settings())
    now = int(time.time())
    touches = {}
    for i, p in enumerate(("kwai", "bigo", "meta", "rokt", "roibest", "tiktok")):
        # Random-looking ids defeat compression, as real click ids do.
        blob = base64.urlsafe_b64encode(random.Random(i).randbytes(700))
        touches[p] = Touch(
            platform=p,
            click_id=blob.decode()[:1000],
            first_seen=now,
            last_seen=now - 100 + i,
        )
    a = Attribution(visitor_id="v", touches=touches)
    with caplog.at_level(logging.WARNING, logger="tracking_mw"):
        result = codec.set_cookie(a)
    assert result is not None
    header, stored = result
    assert len("Set-Cookie: ") + len(header) <= MAX_SET_COOKIE_BYTES
    assert "kwai" not in stored.touches  # the oldest went first
    assert "tiktok" in stored.touches
    decoded = codec.decode(header.split(";", 1)[0].split("=", 1)[1])
    assert decoded is not None and set(decoded.touches) == set(stored.touches)
    for record in caplog.records:
        assert "Click" not in record.getMessage() and blob.decode()[:20] not in record.getMessage()


def test_decode_cache_is_bounded() -> None:
    codec = SessionCodec(settings())
    values = [codec.encode(Attribution(visitor_id=f"v{i}", touches={})) for i in range(5000)]
    for v in values:
        assert codec.decode(v) is not None
    assert len(codec._cache) <= 4096
    codec.clear_cache()
    assert codec._cache == {}
