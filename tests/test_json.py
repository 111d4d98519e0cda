"""The JSON helpers: orjson's output is the stdlib's compact output, with stdlib fallbacks."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tracking_mw import _json

SAMPLES: list[Any] = [
    {"pixel_id": "123", "event": {"event_name": "Purchase", "event_time": 1795617171}},
    {"value": 10.5, "currency": "BRL", "nested": [1, 2, {"a": None, "b": True}]},
    {"name": "João Ünïcødé 日本", "ctl": "a\x1eb\nc", "quote": 'say "hi"\\'},
    [],
    "text",
    0.1,
    {1: "int key", "x": -3},
]


@pytest.mark.parametrize("obj", SAMPLES)
def test_same_text_as_the_stdlib(obj: Any) -> None:
    expected = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    assert _json.dumps(obj) == expected
    assert _json.dumps_bytes(obj) == expected.encode("utf-8")
    assert _json.loads(expected) == json.loads(expected)
    assert _json.loads(expected.encode("utf-8")) == json.loads(expected)


def test_control_characters_are_escaped() -> None:
    # The SQLite outbox joins item texts with RS: an item's JSON must never hold one raw.
    assert "\x1e" not in _json.dumps({"v": "a\x1eb"})


def test_values_orjson_refuses_take_the_stdlib_path() -> None:
    big = 2**70
    assert _json.dumps({"n": big}) == '{"n":' + str(big) + "}"
    assert _json.dumps_bytes([big]) == f"[{big}]".encode()
    with pytest.raises(TypeError):
        _json.dumps({"s": {1, 2}})  # not JSON at all: refused as before


def test_loads_reads_what_only_the_stdlib_wrote() -> None:
    assert math.isnan(_json.loads('{"v":NaN}')["v"])
    with pytest.raises(ValueError):
        _json.loads("{not json")


def test_lone_surrogates_become_replacement_characters() -> None:
    # What bytes.decode("utf-8", "surrogateescape") makes of a latin-1 "é": UTF-8 cannot
    # encode it, and a store failing on it would lose the whole event.
    text = b"caf\xe9".decode("utf-8", "surrogateescape")
    obj = {"product": text, text: [1, "\ud800"], "n": 2**70}
    expected = '{"product":"caf\ufffd","caf\ufffd":[1,"\ufffd"],"n":' + str(2**70) + "}"
    assert _json.dumps(obj) == expected
    assert _json.dumps_bytes(obj) == expected.encode("utf-8")
    assert _json.loads(_json.dumps(obj)) == json.loads(expected)
    assert _json.clean_text(text) == "caf\ufffd"


def test_a_pair_of_surrogates_is_the_character_it_stands_for() -> None:
    # Text decoded from UTF-16 with "surrogatepass" holds the pair as two code points.
    assert _json.dumps(["\ud83d\ude00", "\ude00\ud83d"]) == '["\U0001f600","\ufffd\ufffd"]'
    assert _json.clean_text("plain é") == "plain é"
