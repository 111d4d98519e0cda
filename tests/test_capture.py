"""capture.py: query and cookie parsing, identifier rules, Meta formats; attribution merge rules."""

from __future__ import annotations

import base64
import dataclasses
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracking_mw.attribution import LAST_SEEN_REFRESH, Touch, merge_touch, new_visitor_id
from tracking_mw.capture import (
    MAX_ID_LENGTH,
    UTM_KEYS,
    _capture,
    _checked_params,
    _param_caps,
    _parse_query_text,
    build_fbc,
    build_fbp,
    capture,
    clean_id,
    fbc_holds,
    fbclid_of,
    is_cookie_safe,
    parse_cookies,
    parse_query,
    pixels_by_click,
    query_names,
    url_without_personal_data,
    valid_fbc,
    valid_fbp,
)

NAMES = query_names("link_id")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", {}),
        (b"click_id=abc&pixel_id=42", {"click_id": "abc", "pixel_id": "42"}),
        (b"click_id=first&click_id=second", {"click_id": "first"}),
        (b"click_id=&click_id=x", {"click_id": ""}),
        (b"click_id", {}),
        (b"click_id=a%2Bb+c", {"click_id": "a+b+c"}),  # "+" in an id is a "+"
        (b"click_id=hExEe+mallKjKqagFxg==", {"click_id": "hExEe+mallKjKqagFxg=="}),
        (b"utm_campaign=summer+sale%21", {"utm_campaign": "summer sale!"}),  # a space in tags
        (b"click_id=a%252B", {"click_id": "a%2B"}),  # decoded exactly once
        (b"click_id=%zz%4", {"click_id": "%zz%4"}),  # bad escapes stay as they are
        (b"click%5Fid=enc", {"click_id": "enc"}),  # an encoded key still counts
        (b"click_id=%C3%A9", {"click_id": "\u00e9"}),
        (b"click_id=%FF%FE&fbclid=ok", {"click_id": "", "fbclid": "ok"}),  # not UTF-8: empty
        (b"click_id=%FF&click_id=second", {"click_id": ""}),  # and still the first
        (b"click_id=\xff\xfe&fbclid=ok", {"click_id": "", "fbclid": "ok"}),  # raw non-UTF-8
        (b"fbclid=IwAR0aBc-D_e", {"fbclid": "IwAR0aBc-D_e"}),  # case preserved
        (b"other=1&utm_source=fb&;&&=x", {"utm_source": "fb"}),
        (b"Click_ID=x", {}),  # names are case-sensitive
        (b"click_id=\xc3%A9", {"click_id": "\u00e9"}),  # raw byte + escape make UTF-8
        (b"click_id=\xc3\xa9+x", {"click_id": "\u00e9+x"}),  # raw UTF-8 and a "+"
        (b"click_id=plain\xc3\xa9", {"click_id": "plain\u00e9"}),
    ],
)
def test_parse_query(query: bytes, expected: dict[str, str]) -> None:
    assert parse_query(query, NAMES) == expected


def test_parse_query_huge_inputs() -> None:
    many = b"&".join(b"p%d=%d" % (i, i) for i in range(10_000)) + b"&click_id=last"
    assert parse_query(many, NAMES) == {"click_id": "last"}
    big = b"x=" + b"a" * 65536 + b"&rtid=" + b"r" * 32
    assert parse_query(big, NAMES) == {"rtid": "r" * 32}


def test_parse_cookies() -> None:
    header = '_fbp=fb.1.1.2; a=b; _tmw="quoted"; _fbp=second; broken; =x; _ttp = t '
    got = parse_cookies(header, ["_fbp", "_tmw", "_ttp", "_fbc"])
    assert got == {"_fbp": "fb.1.1.2", "_tmw": "quoted", "_ttp": "t"}
    assert parse_cookies(None, ["_fbp"]) == {}
    assert parse_cookies("", ["_fbp"]) == {}


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("abc", True),
        ("", False),
        (None, False),
        ("a\r\nSet-Cookie: x", False),
        ("tab\there", False),
        ("del\x7f", False),
        ("x" * MAX_ID_LENGTH, True),
        ("x" * (MAX_ID_LENGTH + 1), False),
        ("semi;comma,space ", True),  # kept (signed cookie), but never written raw
        ("next\u0085line", False),  # a C1 control (NEL), as %C2%85 decodes
        ("caf\u00e9", True),
    ],
)
def test_clean_id(value: str | None, ok: bool) -> None:
    assert clean_id(value) == (value if ok else None)


@pytest.mark.parametrize("checked", [True, False])
def test_an_fbclid_with_a_dot_or_separator_is_not_a_click(checked: bool) -> None:
    # fb.1.<ms>.a.b.c would be six parts (Meta rejects the request); "a.b" would read back
    # from the _fbc written for it as click "a" with an appendix "b".
    for bad in ("a.b", "a.b.c", "a;b", "a,b"):
        query = f"fbclid={bad}&utm_source=fb"
        params = (
            _checked_params(query, _param_caps(NAMES))
            if checked
            else _parse_query_text(query, frozenset(NAMES))
        )
        found, _ = _capture(params, {}, "link_id", checked)
        assert "meta" not in found, bad
    params = _checked_params("fbclid=IwAR0aBc-D_e", _param_caps(NAMES))
    found, _ = _capture(params, {}, "link_id", True)
    assert found["meta"].click_id == "IwAR0aBc-D_e"


def test_cookie_safety() -> None:
    assert is_cookie_safe("fb.1.1700000000000.IwAR_x-Y")
    for bad in ("a;b", "a,b", "a b", 'a"b', "a\\b", "é", ""):
        assert not is_cookie_safe(bad)


def test_meta_formats() -> None:
    assert build_fbc("IwAR1", 1700000000123) == "fb.1.1700000000123.IwAR1"
    assert build_fbp(1700000000123, 2147483647) == "fb.1.1700000000123.2147483647"
    assert valid_fbc("fb.1.1700000000123.IwAR1")
    assert valid_fbc("fb.1.1700000000123.IwAR1.AQ")  # five parts: with an appendix
    assert not valid_fbc("fb.1.x.IwAR1")
    # Meta takes 4 or 5 parts; a longer value would fail the whole request.
    assert not valid_fbc("fb.1.1700000000123.IwAR1.AQ.x")
    assert not valid_fbc("fb.1.1700000000123.")
    assert not valid_fbc("fb.1.1700000000123.IwAR1.")
    assert not valid_fbc("garbage")
    assert not valid_fbc(None)
    assert valid_fbp("fb.1.1700000000123.123456")
    assert valid_fbp("fb.2.1700000000123.123456.Bg")
    assert not valid_fbp("fb.1.1700000000123.abc")
    assert fbc_holds("fb.1.1.IwAR1", "IwAR1")
    assert fbc_holds("fb.1.1.IwAR1.AQ", "IwAR1")
    assert not fbc_holds("fb.1.1.IwAR2", "IwAR1")
    assert not fbc_holds("fb.1", "IwAR1")
    assert fbclid_of("fb.1.1.IwAR1.AQ") == "IwAR1"
    assert fbclid_of("nope") is None


def test_capture_every_platform() -> None:
    params = {
        "click_id": "K1",
        "pixel_id": "P1",
        "fbclid": "IwAR1",
        "rtid": "r" * 32,
        "link_id": "L1",
        "ttclid": "T1",
        "utm_source": "src",
        "utm_campaign": "camp",
    }
    cookies = {"_fbp": "fb.1.1700000000000.42", "_ttp": "ttp1", "_bge_ci": "ci1"}
    found, utm = capture(params, cookies)
    assert found["kwai"].click_id == "K1" and found["kwai"].pixel_id == "P1"
    assert found["meta"].click_id == "IwAR1"
    assert found["meta"].extra == {"fbp": "fb.1.1700000000000.42"}
    assert found["rokt"].click_id == "r" * 32
    assert found["roibest"].click_id == "L1"
    assert found["tiktok"].click_id == "T1" and found["tiktok"].extra == {"ttp": "ttp1"}
    # Bigo: only its cookie id arrived (no bbg); pixel_id belongs to Kwai's click.
    assert found["bigo"].click_id is None and found["bigo"].extra == {"cookie_id": "ci1"}
    assert found["bigo"].pixel_id is None
    assert utm == {"utm_source": "src", "utm_campaign": "camp"}


def test_bigo_bbg_full_length_and_cookie_fallback() -> None:
    bbg = "B" * 300
    found, _ = capture({"bbg": bbg, "pixel_id": "bp"}, {"_bge_bbg": "old"})
    assert found["bigo"].click_id == bbg and found["bigo"].pixel_id == "bp"
    found, _ = capture({"pixel_id": "bp"}, {"_bge_bbg": "fromcookie"})
    assert found["bigo"].click_id == "fromcookie" and found["bigo"].pixel_id is None


def test_meta_fbc_cookie_rules() -> None:
    fbc = "fb.1.1700000000000.IwAR1"
    found, _ = capture({"fbclid": "IwAR1"}, {"_fbc": fbc})
    assert found["meta"].extra == {"fbc": fbc}
    # The cookie holds another fbclid: not used (the caller builds a new one).
    found, _ = capture({"fbclid": "IwAR2"}, {"_fbc": fbc})
    assert found["meta"].click_id == "IwAR2" and "fbc" not in found["meta"].extra
    # No fbclid in the URL: the pixel's cookie carries it.
    found, _ = capture({}, {"_fbc": fbc})
    assert found["meta"].click_id == "IwAR1" and found["meta"].extra == {"fbc": fbc}
    # Garbage Meta cookies are ignored.
    found, _ = capture({}, {"_fbc": "nonsense", "_fbp": "nonsense"})
    assert "meta" not in found


def test_roibest_parameter_configurable_or_off() -> None:
    found, _ = capture({"rb": "L9", "link_id": "no"}, {}, link_param="rb")
    assert found["roibest"].click_id == "L9"
    found, _ = capture({"link_id": "L1"}, {}, link_param=None)
    assert "roibest" not in found
    assert "link_id" not in query_names(None)


def test_utm_only_known_keys_and_capped() -> None:
    params = {k: k for k in UTM_KEYS} | {"utm_evil": "x", "utm_term": "t" * 1000}
    _, utm = capture(params, {})
    assert set(utm) == set(UTM_KEYS) - {"utm_term"}


def test_bad_click_ids_dropped() -> None:
    found, _ = capture({"click_id": "a\nb", "rtid": "x" * 600, "ttclid": ""}, {})
    assert found == {}


# -- merge rules -----------------------------------------------------------------------------


def _merge(old: Touch | None, click: str | None, now: int, **kw: object) -> tuple[Touch, bool]:
    args: dict[str, object] = {
        "platform": "kwai",
        "click_id": click,
        "pixel_id": None,
        "extra": {},
        "utm": {},
        "landing_url": "https://shop/?click_id=x",
    }
    args.update(kw)
    return merge_touch(old, now=now, **args)  # type: ignore[arg-type]


def test_new_touch() -> None:
    t, changed = _merge(None, "c1", 100, pixel_id="p", utm={"utm_source": "s"})
    assert changed
    assert (t.click_id, t.pixel_id, t.first_seen, t.last_seen) == ("c1", "p", 100, 100)
    assert t.utm == {"utm_source": "s"} and t.landing_url == "https://shop/?click_id=x"


def test_newer_click_replaces_and_resets_first_seen() -> None:
    old, _ = _merge(None, "c1", 100, platform="meta", extra={"fbc": "fb.1.1.c1", "fbp": "fb.1.1.9"})
    t, changed = _merge(old, "c2", 200, platform="meta", extra={"fbc": "fb.1.2.c2"})
    assert changed and t.click_id == "c2" and t.first_seen == 200
    # fbc belonged to the old click; fbp identifies the browser and stays.
    assert t.extra == {"fbc": "fb.1.2.c2", "fbp": "fb.1.1.9"}


def test_same_click_refreshes_last_seen_rarely() -> None:
    old, _ = _merge(None, "c1", 100)
    t, changed = _merge(old, "c1", 100 + LAST_SEEN_REFRESH - 1)
    assert not changed and t is old
    t, changed = _merge(old, "c1", 100 + LAST_SEEN_REFRESH)
    assert changed and t.last_seen == 100 + LAST_SEEN_REFRESH and t.first_seen == 100
    assert t.landing_url == old.landing_url


def test_same_click_new_details_count_as_change() -> None:
    old, _ = _merge(None, "c1", 100)
    t, changed = _merge(old, "c1", 101, pixel_id="p2")
    assert changed and t.pixel_id == "p2" and t.last_seen == 100
    t, changed = _merge(old, "c1", 101, utm={"utm_source": "x"})
    assert changed and t.utm == {"utm_source": "x"}


def test_cookie_only_identifiers_update_extra() -> None:
    old, _ = _merge(None, "c1", 100, platform="bigo")
    t, changed = _merge(old, None, 5000, platform="bigo", extra={"cookie_id": "ci"})
    assert changed and t.click_id == "c1" and t.extra == {"cookie_id": "ci"}
    assert t.last_seen == 100
    t2, changed = _merge(t, None, 6000, platform="bigo", extra={"cookie_id": "ci"})
    assert not changed and t2 is t


def test_clickless_touch() -> None:
    t, changed = _merge(None, None, 100, platform="meta", extra={"fbp": "fb.1.1.1"}, utm={"a": "b"})
    assert changed and t.click_id is None and t.utm == {} and t.extra == {"fbp": "fb.1.1.1"}


def test_landing_url_is_kept_verbatim() -> None:
    t, _ = _merge(None, "c1", 1, landing_url="https://x/?click_id=A%2Bb")
    assert t.landing_url == "https://x/?click_id=A%2Bb"
    assert re.fullmatch(r"[\x21-\x7e]+", t.landing_url or "")


def test_fast_built_touches_equal_constructed_ones() -> None:
    # merge_touch builds touches without the dataclass __init__: they must be the same objects.
    new, _ = _merge(None, "c1", 5, pixel_id="p", utm={"utm_source": "s"}, extra={"ttp": "t"})
    assert new == Touch(
        platform="kwai",
        click_id="c1",
        pixel_id="p",
        first_seen=5,
        last_seen=5,
        landing_url="https://shop/?click_id=x",
        utm={"utm_source": "s"},
        extra={"ttp": "t"},
    )
    assert list(vars(new)) == [f.name for f in dataclasses.fields(Touch)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.click_id = "x"  # type: ignore[misc]
    later, changed = _merge(new, "c1", 5 + LAST_SEEN_REFRESH)
    assert changed and later == dataclasses.replace(new, last_seen=5 + LAST_SEEN_REFRESH)
    assert repr(later).startswith("Touch(platform='kwai', click_id='c1'")


def test_visitor_ids_are_random_urlsafe_128_bits() -> None:
    ids = {new_visitor_id() for _ in range(200)}
    assert len(ids) == 200
    for vid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", vid)
        assert len(base64.urlsafe_b64decode(vid + "==")) == 16


def test_visitor_ids_differ_in_a_forked_child() -> None:
    # Random bytes are fetched in bulk: a forked worker must not reuse its parent's.
    new_visitor_id()  # the parent now holds unused random bytes
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child process
        os.write(write_end, new_visitor_id().encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child = os.read(read_end, 64).decode()
    os.close(read_end)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", child)
    assert child != new_visitor_id()


# The middleware parses a URL-safe query as text, and one without "%" or "+" straight into
# validated values; both must give exactly what parse_query followed by capture gives.
_PLAIN_CHARS = "ab_=&%+-.~1;" + "click_id=" + "pixel_id="
_PIECES = ["click_id=", "pixel_id=", "bbg=", "fbclid=", "utm_source=", "link_id=", "rb=", "&"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(_PIECES),
            st.text(alphabet=_PLAIN_CHARS, max_size=8),
            st.sampled_from(["x" * 600, "y" * 1100, "%41", "%ZZ", "+", "click%5Fid="]),
        ),
        max_size=12,
    ),
    st.sampled_from([None, "link_id", "rb"]),
)
def test_text_and_checked_query_paths_match_parse_query(parts: list[str], link: str | None) -> None:
    text = "".join(parts)
    names = query_names(link)
    expected = capture(parse_query(text.encode(), names), {}, link_param=link)
    assert _parse_query_text(text, frozenset(names)) == parse_query(text.encode(), names)
    if "%" not in text and "+" not in text:
        params = _checked_params(text, _param_caps(names))
        assert _capture(params, {}, link, True) == expected


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://s.test/p", "https://s.test/p"),
        ("https://s.test/p?click_id=K1&pixel_id=P&utm_source=kwai", None),  # untouched
        (
            "https://s.test/p?click_id=K1&email=jane%40x.com&phone=%2B5511999&utm_source=fb",
            "https://s.test/p?click_id=K1&utm_source=fb",
        ),
        # Any e-mail address, whatever its parameter's name; names that contain a word.
        ("https://s.test/p?contact=a@b.co&user_email=x&WhatsApp=1&q=1", "https://s.test/p?q=1"),
        # Short names only as whole names: "fname" and "hotel" stay.
        (
            "https://s.test/p?name=J&fn=a&tel=1&fname=ok&hotel=ok",
            "https://s.test/p?fname=ok&hotel=ok",
        ),
        ("https://s.test/p?first%5Fname=J&e%2Dmail=x&cpf=123", "https://s.test/p"),
    ],
)
def test_landing_urls_lose_personal_data(url: str, kept: str | None) -> None:
    assert url_without_personal_data(url) == (url if kept is None else kept)


def test_utm_tags_holding_an_email_are_not_kept() -> None:
    params = {"utm_source": "newsletter", "utm_term": "jane@x.com", "click_id": "K"}
    assert capture(params, {})[1] == {"utm_source": "newsletter"}


@pytest.mark.parametrize(
    ("query", "kwai", "bigo"),
    [
        (b"click_id=K&pixel_id=PK&bbg=B&pixel_id=PB", "PK", "PB"),
        (b"bbg=B&pixel_id=PB&click_id=K&pixel_id=PK", "PK", "PB"),
        (b"click_id=K&bbg=B&pixel_id=P", None, "P"),  # the pixel after bbg is Bigo's
        (b"click_id=K&pixel_id=P&bbg=B", "P", None),
        (b"click%5Fid=K&pixel%5Fid=a%2Bb&bbg=B&pixel_id=%0A&pixel_id=late", "a+b", None),
    ],
)
def test_pixel_ids_go_with_the_click_before_them(
    query: bytes, kwai: str | None, bigo: str | None
) -> None:
    assert pixels_by_click(query) == {"kwai": kwai, "bigo": bigo}
