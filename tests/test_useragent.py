"""useragent.py: user-agents' answers, the bot flag, truncation, the cache, resolver parity."""

from __future__ import annotations

import pytest
import user_agents

from tracking_mw import useragent
from tracking_mw.useragent import (
    MAX_USER_AGENT,
    _info,
    _native_resolver,
    _python_resolve,
    is_bot,
    parse_user_agent,
    resolver_name,
)

ANDROID = (
    "Mozilla/5.0 (Linux; Android 13; SM-A536B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1"
)
WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
KWAI_WEBVIEW = (
    "Mozilla/5.0 (Linux; Android 12; M2101K6G Build/SKQ1.210908.001; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/119.0.6045.193 Mobile Safari/537.36 Kwai/11.0"
)
FB_IAB = (
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/440.0.0.33.116;]"
)
BOTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
]
CORPUS = [
    ANDROID,
    IPHONE,
    IPAD,
    WINDOWS,
    KWAI_WEBVIEW,
    FB_IAB,
    *BOTS,
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "curl/8.5.0",
    "python-httpx/0.28.1",
    "Opera/9.80 (J2ME/MIDP; Opera Mini/9.80 (S60; SymbOS; Opera Mobi/23.348; U; en) Presto/2.5.25",
    "",
    "\u00e9\u00e8 weird \u2603",
]


@pytest.mark.parametrize(
    ("ua", "device_type", "os"),
    [
        (ANDROID, "mobile", "Android"),
        (IPHONE, "mobile", "iOS"),
        (IPAD, "tablet", "iOS"),
        (WINDOWS, "pc", "Windows"),
        (KWAI_WEBVIEW, "mobile", "Android"),
        (BOTS[0], "bot", "Other"),
        ("curl/8.5.0", "other", "Other"),
    ],
)
def test_answers(ua: str, device_type: str, os: str) -> None:
    info = parse_user_agent(ua)
    assert info.device_type == device_type
    assert info.os == os


@pytest.mark.parametrize("ua", CORPUS)
def test_same_answers_as_user_agents(ua: str) -> None:
    ref = user_agents.parse(ua)
    info = parse_user_agent(ua)
    assert info.browser == ref.browser.family
    assert info.browser_version == ref.browser.version_string
    assert info.os == ref.os.family and info.os_version == ref.os.version_string
    assert info.device == ref.device.family
    assert (info.is_mobile, info.is_tablet, info.is_pc, info.is_bot) == (
        ref.is_mobile,
        ref.is_tablet,
        ref.is_pc,
        ref.is_bot,
    )


def test_native_resolver_parity() -> None:
    native = _native_resolver()
    assert native is not None  # the test extras install ua-parser-rs
    for ua in CORPUS:
        assert _info(native(ua)) == _info(_python_resolve(ua)), ua


def test_native_resolver_chosen() -> None:
    assert resolver_name() == "user-agents+ua-parser-rs"


def test_bots() -> None:
    for ua in BOTS:
        assert is_bot(ua)
    for ua in (ANDROID, IPHONE, WINDOWS, "", None):
        assert not is_bot(ua)


def test_huge_agent_truncated_before_parsing() -> None:
    huge = WINDOWS + "x" * 1_000_000
    info = parse_user_agent(huge)
    assert info == parse_user_agent(huge[:MAX_USER_AGENT])
    assert huge not in useragent._parser._cache
    assert huge[:MAX_USER_AGENT] in useragent._parser._cache


def test_cache_hit_returns_same_object_and_is_bounded() -> None:
    a = parse_user_agent(ANDROID + " unique-1")
    assert parse_user_agent(ANDROID + " unique-1") is a
    for i in range(10_050):
        parse_user_agent(f"agent-{i}")
    assert len(useragent._parser._cache) <= 10_000
