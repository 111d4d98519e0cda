"""The fast paths of request building give exactly the bytes of the plain ones."""

from __future__ import annotations

import json
import random
import urllib.parse

import pytest

from tracking_mw._normalize import meta_hash, meta_hash_cached, normalize_ip, normalize_ip_cached
from tracking_mw.delivery._base import dumps
from tracking_mw.events import Event
from tracking_mw.platforms import KwaiAdapter, MetaAdapter
from tracking_mw.platforms._base import form_encode, form_quote
from tracking_mw.testing import FakePlatforms

from ._helpers import fake_settings, full_attribution

TRICKY = [
    "",
    "plain",
    "a b+c%d&e=f",
    "%25%2B already-escaped %41",
    "ação São Paulo 東京 😀",
    '{"k":"v/w?x#y","n":[1,2.5],"t":true}',
    "\x00\x01\x7f~._-",
    "x" * 5000 + " % + &",
]


@pytest.mark.parametrize("text", TRICKY)
def test_form_quote_is_quote_plus(text: str) -> None:
    assert form_quote(text) == urllib.parse.quote_plus(text).encode("ascii")


def test_form_quote_random_texts() -> None:
    rng = random.Random(7)
    alphabet = "ab %+&=~._-/:,{}[]\"'\\é東😀\x00\x7f"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert form_quote(text) == urllib.parse.quote_plus(text).encode("ascii"), text


def test_form_encode_is_urlencode() -> None:
    pairs = [("data", '[{"a":"b c"}]'), ("access_token", "EAA+/=tok"), ("x y", "%")]
    assert form_encode(pairs) == urllib.parse.urlencode(pairs).encode("ascii")


def _meta(**changes: object) -> MetaAdapter:
    return MetaAdapter(fake_settings(FakePlatforms(), **changes))


def _items(meta: MetaAdapter, n: int) -> list[dict[str, object]]:
    attr = full_attribution()
    return [
        meta.prepare(
            Event(
                name="Purchase",
                value="10.50",  # type: ignore[arg-type]
                currency="BRL",
                user={"email": f"buyer{i}@example.com", "city": "São Paulo"},  # type: ignore[arg-type]
                contents=[{"id": f"sku {i}", "quantity": 2, "price": 5.25}],
                properties={"note": "a&b=c %41 +"},
                event_id=f"evt-{i}",
            ),
            attr,
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("test_code", [None, "TEST123"])
def test_meta_build_body_is_urlencode(test_code: str | None) -> None:
    meta = _meta()
    if test_code is not None:
        meta.config = meta.config.__class__(
            pixel_id=meta.config.pixel_id,
            access_token=meta.config.access_token,
            base_url=meta.config.base_url,
            test_event_code=test_code,
        )
    items = _items(meta, 3)
    req = meta.build(items)
    form = {
        "data": json.dumps([i["event"] for i in items], separators=(",", ":"), ensure_ascii=False),
        "access_token": meta.config.access_token.reveal(),
    }
    if test_code:
        form["test_event_code"] = test_code
    assert req.body == urllib.parse.urlencode(form).encode("ascii")


def test_meta_build_stored_splices_the_same_request() -> None:
    meta = _meta()
    items = _items(meta, 5)
    plain = meta.build(items)
    stored = meta.build_stored([dumps(i) for i in items])
    assert stored == plain


def test_meta_build_stored_parses_texts_of_another_shape() -> None:
    meta = _meta()
    items = _items(meta, 2)
    # Keys in another order (not what prepare() makes): parsed, same request.
    texts = [dumps({"event": i["event"], "pixel_id": i["pixel_id"]}) for i in items]
    assert meta.build_stored(texts) == meta.build(items)


def test_default_build_stored_parses() -> None:
    kwai = KwaiAdapter(fake_settings(FakePlatforms()))
    item = kwai.prepare(
        Event(name="Purchase", value="1", currency="BRL"),  # type: ignore[arg-type]
        full_attribution(),
    )
    assert kwai.build_stored([dumps(item)]) == kwai.build([item])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("em", " Buyer@Example.com "),
        ("ph", "(11) 91234-5678"),
        ("ph", "+55 11 91234-5678"),
        ("ct", "São Paulo"),
        ("db", "1990-05-17"),
        ("country", "Brazil"),
        ("ge", "feminino"),
        ("em", "not an email"),
    ],
)
def test_cached_hash_matches(field: str, value: str) -> None:
    for _ in range(2):  # the second call is served from the cache
        assert meta_hash_cached(field, value, "BR") == meta_hash(field, value, "BR")
    assert meta_hash_cached(field, None, "BR") is None


@pytest.mark.parametrize("ip", ["203.0.113.7", " 2001:db8::1 ", "999.1.1.1", ""])
def test_cached_ip_matches(ip: str) -> None:
    assert normalize_ip_cached(ip) == normalize_ip(ip)
