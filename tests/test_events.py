"""Events: construction errors and the universal validation rules name the field."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

from tracking_mw._errors import InvalidEvent
from tracking_mw.events import Event, UserData
from tracking_mw.platforms import validate_event


def field_of(**kw: Any) -> str | None:
    with pytest.raises(InvalidEvent) as info:
        validate_event(Event(**{"name": "Lead", **kw}))
    return info.value.field


def construction_field(**kw: Any) -> str | None:
    with pytest.raises(InvalidEvent) as info:
        Event(**{"name": "Lead", **kw})
    return info.value.field


@pytest.mark.parametrize("name", ["Purchase", "purchase", " PURCHASE "])
def test_purchase_needs_value_and_currency(name: str) -> None:
    assert field_of(name=name) == "value"
    assert field_of(name=name, value=0) == "currency"
    assert field_of(name=name, currency="BRL") == "value"
    validate_event(Event(name=name, value=Decimal("0"), currency="BRL"))


def test_first_deposit_may_come_without_money() -> None:
    validate_event(Event(name="FirstDeposit"))
    validate_event(Event(name="FirstDeposit", value=50, currency="BRL"))


def test_value_and_currency_go_together() -> None:
    assert field_of(value=10) == "currency"
    assert field_of(currency="USD") == "value"


@pytest.mark.parametrize(
    ("contents", "field"),
    [
        ([{"quantity": 1}], "contents[0].id"),
        ([{"id": ""}], "contents[0].id"),
        ([{"id": True}], "contents[0].id"),
        ([{"id": "a"}, {"id": "b", "quantity": 0}], "contents[1].quantity"),
        ([{"id": "a", "quantity": 1.5}], "contents[0].quantity"),
        ([{"id": "a", "price": "9.99"}], "contents[0].price"),
        ([{"id": "a", "item_price": -1}], "contents[0].item_price"),
    ],
)
def test_contents_rules(contents: list[dict[str, Any]], field: str) -> None:
    assert field_of(contents=contents) == field


def test_event_source_url_must_be_http() -> None:
    assert field_of(event_source_url="javascript:alert(1)") == "event_source_url"
    validate_event(Event(name="Lead", event_source_url="https://shop.example/x"))


def test_long_names_are_refused() -> None:
    assert field_of(name="x" * 257) == "name"


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"name": "  "}, "name"),
        ({"value": "abc"}, "value"),
        ({"value": -1}, "value"),
        ({"value": True}, "value"),
        ({"value": "NaN"}, "value"),
        ({"currency": "US"}, "currency"),
        ({"currency": "R$1"}, "currency"),
        ({"event_id": ""}, "event_id"),
        ({"event_id": "x" * 129}, "event_id"),
        ({"event_time": "yesterday"}, "event_time"),
        ({"event_time": time.time() + 3600}, "event_time"),
        ({"properties": ["a"]}, "properties"),
        ({"contents": "sku"}, "contents"),
        ({"user": {"emial": "x@y.z"}}, "user"),
        ({"user": {"email": 3.5}}, "user.email"),
        ({"user": "x@y.z"}, "user"),
    ],
)
def test_construction_errors_name_the_field(kw: dict[str, Any], field: str) -> None:
    assert construction_field(**kw) == field


def test_event_round_trips_through_dict() -> None:
    ev = Event(
        name="Purchase",
        value="10.28",
        currency="brl",
        user={"email": "a@b.co", "phone": 5511912345678},
        contents=[{"id": "1", "quantity": 2}],
        properties={"order_id": "o-1"},
        event_source_url="https://shop.example/ok",
    )
    assert ev.currency == "BRL"
    assert ev.user.phone == "5511912345678"
    again = Event.from_dict(ev.to_dict())
    assert again == ev
    assert again.value == Decimal("10.28")
    validate_event(again)


def test_user_data_repr_hides_personal_data() -> None:
    user = UserData(email="secret@example.com")
    assert "secret" not in repr(user)
    assert UserData.coerce(None) == UserData()
    assert UserData.coerce({"email": "", "phone": None}) == UserData()


def test_event_time_accepts_datetimes_and_hints_milliseconds() -> None:
    import datetime

    aware = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert Event(name="Lead", event_time=aware).event_time == aware.timestamp()
    naive = datetime.datetime(2024, 1, 2, 3, 4, 5)
    assert Event(name="Lead", event_time=naive).event_time == aware.timestamp()
    with pytest.raises(InvalidEvent, match="milliseconds") as info:
        Event(name="Lead", event_time=time.time() * 1000)
    assert info.value.field == "event_time"
    assert construction_field(event_time=float("nan")) == "event_time"
    assert construction_field(event_time=0) == "event_time"
    assert isinstance(Event(name="Lead", event_time=1_700_000_000).event_time, float)


def test_negative_zero_is_zero() -> None:
    # round(-0.004, 2) is -0.0: written as "-0.00" it is rejected (Bigo's "invalid monetary").
    ev = Event(name="Purchase", value=round(-0.004, 2), currency="USD")
    assert ev.value == 0 and not ev.value.is_signed()
    assert ev.json_value == 0
    from tracking_mw.platforms.bigo import bigo_amount

    assert bigo_amount(ev.value) == "0.00"
    assert not Event(name="Purchase", value=Decimal("-0"), currency="USD").value.is_signed()


@pytest.mark.parametrize(
    "make",
    [
        lambda items: (dict(c) for c in items),
        lambda items: map(dict, items),
        lambda items: iter(items),
        lambda items: list(items),
    ],
)
def test_contents_from_any_iterable(make: Any) -> None:
    # Drawn once: a generator validated first and copied after would arrive empty.
    items = [{"id": "a", "quantity": 2}, {"id": "b"}]
    ev = Event(name="AddToCart", contents=make(items))
    assert ev.contents == ({"id": "a", "quantity": 2}, {"id": "b"})


@pytest.mark.parametrize("contents", ["ab", b"ab", {"id": "a"}, 5, [{"id": "a"}, "b"]])
def test_contents_that_are_not_a_list_of_dicts(contents: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        Event(name="AddToCart", contents=contents)
    assert info.value.field == "contents"


def test_text_utf8_cannot_encode_is_cleaned_in_the_event() -> None:
    # What the outbox and the platforms get (U+FFFD for a lone surrogate), the event and its
    # receipt say too.
    raw = b"pedido-caf\xe9".decode("utf-8", "surrogateescape")
    ev = Event(name="Compra " + raw, event_id=raw)
    assert ev.event_id == "pedido-caf\ufffd" and ev.name == "Compra pedido-caf\ufffd"
    assert Event(name="Lead", event_id="plain-1").event_id == "plain-1"
