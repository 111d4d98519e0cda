"""Core.process directly: the repeat-visitor shortcut and the attribution made on demand."""

from __future__ import annotations

from typing import Any

import pytest

import tracking_mw._core as core_mod
from tracking_mw._core import Core, RequestParts
from tracking_mw.config import Settings
from tracking_mw.session import CLOCK_LEEWAY

KEY = "k" * 32
DAY = 86_400
T0 = 1_800_000_000


def parts(cookie: str | None = None, query: bytes = b"", **kw: Any) -> RequestParts:
    fields: dict[str, Any] = {
        "scheme": "https",
        "host": "shop.test",
        "server": ("10.0.0.1", 443),
        "path": "/p",
        "query": query,
        "cookie": cookie,
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0",
        "referer": None,
        "peer": "198.51.100.7",
        "x_forwarded_for": None,
        "forwarded": None,
    }
    fields.update(kw)
    return RequestParts(**fields)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [float(T0)]
    monkeypatch.setattr(core_mod.time, "time", lambda: now[0])
    return now


def make_core(**kw: Any) -> Core:
    settings = Settings(
        secret_key=KEY, cookie_secure=False, outbox="memory://", start_dispatcher=False, **kw
    )
    return Core(settings, None)


def land(core: Core) -> str:
    """The ``name=value`` cookie a landing with a Kwai click gets."""
    _, written = core.process(parts(query=b"click_id=C1&pixel_id=P1"), {})
    assert len(written) == 1
    return written[0].split(";", 1)[0]


def count_decodes(core: Core) -> list[str]:
    """A list that grows by one for each cookie ``core`` decodes from now on."""
    calls: list[str] = []
    real = core.codec.decode

    def counting(raw: str | None, now: int | None = None) -> Any:
        calls.append("decode")
        return real(raw, now)

    core.codec.decode = counting  # type: ignore[method-assign]
    return calls


def test_repeat_request_is_answered_from_memory(clock: list[float]) -> None:
    core = make_core()
    cookie = land(core)
    header = f"{cookie}; other=1"
    first, w1 = core.process(parts(header), {})
    assert w1 == [] and header in core._quiet
    calls = count_decodes(core)
    again, w2 = core.process(parts(header, peer="203.0.113.9"), {})
    assert w2 == [] and calls == []  # neither parsed nor decoded again
    a1, a2 = first.attribution, again.attribution
    assert a1 is not None and a2 is not None
    assert a1.visitor_id == a2.visitor_id and a1.touches == a2.touches
    assert a2.touches["kwai"].click_id == "C1"
    # The client context is still this request's own.
    assert a1.client.ip == "198.51.100.7" and a2.client.ip == "203.0.113.9"
    assert a2.client.url == "https://shop.test/p"


def test_remembered_answer_ends_with_the_cookie(clock: list[float]) -> None:
    core = make_core(cookie_max_age=DAY)
    cookie = land(core)
    state, _ = core.process(parts(cookie), {})
    assert state.attribution is not None and state.attribution.touches
    clock[0] += DAY  # the last second the cookie is valid
    state, _ = core.process(parts(cookie), {})
    assert state.attribution is not None and "kwai" in state.attribution.touches
    clock[0] += 1  # expired: a fresh visitor, as without the shortcut
    state, _ = core.process(parts(cookie), {})
    assert state.attribution is not None and state.attribution.touches == {}
    # A clock behind the signing time (another host signed it): valid within the leeway,
    # remembered or not; further back, not valid either.
    clock[0] = T0 - CLOCK_LEEWAY
    state, _ = core.process(parts(cookie), {})
    assert state.attribution is not None and "kwai" in state.attribution.touches
    clock[0] = T0 - CLOCK_LEEWAY - 1
    state, _ = core.process(parts(cookie), {})
    assert state.attribution is not None and state.attribution.touches == {}


def test_a_visitor_who_clicked_days_ago_is_answered_from_memory(clock: list[float]) -> None:
    """A click id that only a landing's query brings is never refreshed by a later page
    view, so the memory lasts as long as the cookie, not an hour past the click."""
    core = make_core(cookie_max_age=28 * DAY)
    cookie = land(core)
    clock[0] += 3 * DAY
    _, written = core.process(parts(cookie), {})
    assert written == [] and core.recall(cookie) is not None
    _, end, _, _ = core._quiet[cookie]
    assert end == T0 + 28 * DAY + 1  # the cookie's last valid second, end excluded
    calls = count_decodes(core)
    clock[0] += 7 * DAY
    state, written = core.process(parts(cookie), {})
    assert written == [] and calls == []  # neither parsed nor decoded again
    fresh, _ = make_core(cookie_max_age=28 * DAY).process(parts(cookie), {})
    assert state.attribution is not None and fresh.attribution is not None
    assert state.attribution.touches == fresh.attribution.touches
    assert state.attribution.touches["kwai"].last_seen == T0


def test_a_pixel_cookie_bringing_the_click_id_again_bounds_the_memory(
    clock: list[float],
) -> None:
    core = make_core()
    _, written = core.process(parts(query=b"bbg=B1&pixel_id=P1"), {})
    header = f"{written[0].split(';', 1)[0]}; _bge_bbg=B1"
    clock[0] += 600
    _, again = core.process(parts(header), {})
    assert again == [] and header in core._quiet
    _, end, _, _ = core._quiet[header]
    assert end == T0 + 3600  # then the click id seen again refreshes last_seen
    clock[0] = T0 + 3600
    assert core.recall(header) is None
    _, refreshed = core.process(parts(header), {})
    assert len(refreshed) == 1 and refreshed[0].startswith("_tmw=")


def test_requests_with_something_to_capture_are_not_remembered(clock: list[float]) -> None:
    core = make_core()
    cookie = land(core)
    # A query: captured every time (a newer click replaces the older one).
    state, written = core.process(parts(cookie, query=b"click_id=C2"), {})
    assert len(written) == 1 and core._quiet == {}
    assert state.attribution is not None
    assert state.attribution.touches["kwai"].click_id == "C2"
    # A pixel cookie beside ours: captured, not remembered.
    header = f"{cookie}; _bge_bbg=B1"
    _, written = core.process(parts(header), {})
    assert written and header not in core._quiet
    # A tampered or unknown cookie: a fresh visitor each time, nothing remembered.
    bad = cookie[:-2] + "xx"
    s1, _ = core.process(parts(bad), {})
    s2, _ = core.process(parts(bad), {})
    assert s1.attribution is not None and s2.attribution is not None
    assert s1.attribution.visitor_id != s2.attribution.visitor_id
    assert bad not in core._quiet


def test_remembered_requests_are_bounded(
    clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core_mod, "_QUIET_SIZE", 3)
    core = make_core()
    cookie = land(core)
    for i in range(7):
        core.process(parts(f"{cookie}; n={i}"), {})
        assert 1 <= len(core._quiet) <= 3
    # Very long Cookie headers (many cookies of other apps) are not kept.
    huge = f"{cookie}; junk={'x' * 5000}"
    state, _ = core.process(parts(huge), {})
    assert huge not in core._quiet
    assert state.attribution is not None and "kwai" in state.attribution.touches


def test_attribution_is_made_once_and_only_when_asked(clock: list[float]) -> None:
    core = make_core()
    made: list[int] = []
    real = core._attribution_of

    def counting(*args: Any, **kw: Any) -> Any:
        made.append(1)
        return real(*args, **kw)

    core._attribution_of = counting  # type: ignore[method-assign]
    state, _ = core.process(parts(query=b"click_id=C1"), {})
    assert made == []
    first = state.attribution
    assert first is state.attribution and made == [1]
    assert first is not None and first.client.url == "https://shop.test/p?click_id=C1"


def test_attribution_made_on_demand_never_raises(
    clock: list[float], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    core = make_core()
    state, _ = core.process(parts(query=b"click_id=C1"), {})

    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(core_mod, "resolve_client_ip", broken)
    core._trusted = ("10.0.0.0/8",)  # type: ignore[assignment]
    a = state.attribution
    assert a is not None and a.touches["kwai"].click_id == "C1"
    assert a.client.ip is None and a.client.url is None
    assert "client context not read: RuntimeError" in caplog.text


def _meta_settings() -> dict[str, Any]:
    from tracking_mw.testing import FakePlatforms

    overrides = FakePlatforms().settings_overrides("http://127.0.0.1:9")
    return {"meta": overrides["meta"], "bigo": overrides["bigo"]}


BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def test_remembered_answers_equal_the_full_path(clock: list[float]) -> None:
    """Over time and for several visitors, the core that remembers answers exactly as a
    fresh core (no memory, no decode cache) does for each request."""
    extra = _meta_settings()
    core = make_core(cookie_max_age=2 * DAY, **extra)
    landing, written = core.process(
        parts(query=b"fbclid=IwAR0abcdefghijklmnop&bbg=BBG-123456789"), {}
    )
    assert landing.attribution is not None
    vid = landing.attribution.visitor_id
    jar = dict(w.split(";", 1)[0].split("=", 1) for w in written)
    assert set(jar) == {"_tmw", "_fbc", "_fbp"}
    everything = "; ".join(f"{k}={v}" for k, v in jar.items())
    headers = [
        everything,
        f"_tmw={jar['_tmw']}",  # the pixel cookies lost: written back every time
        f"{everything}; _bge_bbg=BBG-123456789",  # Bigo's cookie repeats the click id
        f"{everything}; _bge_ci=CI-1",
    ]
    start = clock[0]
    for offset in (0, 5, 3599, 3600, 3601, 7300, DAY, 2 * DAY, 2 * DAY + 1):
        for ua in (parts().user_agent, BOT):
            for header in headers:
                clock[0] = start + offset
                for _ in range(2):  # the second time may come from memory
                    state, written = core.process(parts(header, user_agent=ua), {})
                    fresh_state, fresh_written = make_core(cookie_max_age=2 * DAY, **extra).process(
                        parts(header, user_agent=ua), {}
                    )
                    a, b = state.attribution, fresh_state.attribution
                    assert a is not None and b is not None
                    assert [w.split(";")[0].split("=")[0] for w in written] == [
                        w.split(";")[0].split("=")[0] for w in fresh_written
                    ], (offset, ua, header[-20:])
                    # The same visitor, or both a new one (the cookie expired).
                    assert (a.visitor_id == vid) == (b.visitor_id == vid)
                    if a.visitor_id == vid:
                        assert a.touches == b.touches, (offset, header[-20:])
                    else:  # new random ids (fbp) on both sides: the same touches otherwise
                        assert a.touches.keys() == b.touches.keys()
    assert core._quiet  # the memory was used along the way


def test_pixel_cookie_page_views_are_remembered(clock: list[float]) -> None:
    core = make_core(**_meta_settings())
    _, written = core.process(parts(query=b"fbclid=IwAR0abcdefghijklmnop"), {})
    header = "; ".join(w.split(";", 1)[0] for w in written)
    _, again = core.process(parts(header), {})
    assert again == [] and header in core._quiet
    _, end, stored, _ = core._quiet[header]
    # Until the hourly last_seen refresh could first apply, at the latest (end excluded).
    assert end <= min(t.last_seen for t in stored.touches.values()) + 3600


def test_bot_flags_are_remembered_per_agent_as_sent() -> None:
    core = make_core()
    human = parts().user_agent
    assert human is not None
    # Past the user-agent cap: truncated before parsing, still a bot, never a key.
    huge = BOT + " x" * 600_000
    for _ in range(2):  # the second time from memory, with the same answers
        for ua, captured in ((BOT, False), (huge, False), (human, True)):
            state, written = core.process(parts(query=b"click_id=C1", user_agent=ua), {})
            assert state.attribution is not None
            assert ("kwai" in state.attribution.touches) is captured
            assert len(written) == captured
    assert core._bots == {BOT: True, human: False}


def _jar(written: list[str]) -> dict[str, str]:
    return dict(w.split(";", 1)[0].split("=", 1) for w in written)


def test_a_stale_pixel_cookie_never_undoes_a_newer_landing(clock: list[float]) -> None:
    core = make_core()
    # The Bigo pixel's cookie still holds an earlier click when the new landing arrives.
    first, written = core.process(
        parts("_bge_bbg=OLDBBG999", query=b"bbg=NEWBBG123&pixel_id=PIX"), {}
    )
    tmw = _jar(written)["_tmw"]
    assert first.attribution is not None
    landed = first.attribution.touches["bigo"]
    clock[0] += 60
    later, written = core.process(parts(f"_tmw={tmw}; _bge_bbg=OLDBBG999", path="/next"), {})
    assert written == []
    assert later.attribution is not None
    assert later.attribution.touches["bigo"] == landed
    assert (landed.click_id, landed.pixel_id) == ("NEWBBG123", "PIX")
    assert landed.landing_url == "https://shop.test/p?bbg=NEWBBG123&pixel_id=PIX"


def test_a_pixel_cookie_click_fills_in_when_nothing_is_stored(clock: list[float]) -> None:
    core = make_core()
    state, written = core.process(parts("_bge_bbg=B1; _bge_ci=CI1", query=b"utm_source=x"), {})
    assert state.attribution is not None and "_tmw" in _jar(written)
    bigo = state.attribution.touches["bigo"]
    assert (bigo.click_id, bigo.pixel_id, bigo.extra) == ("B1", None, {"cookie_id": "CI1"})
    assert bigo.utm == {}  # this page's tags did not come with that click


def test_meta_fbc_replaces_the_stored_click_only_when_it_is_newer(clock: list[float]) -> None:
    core = make_core(**_meta_settings())
    _, written = core.process(parts(query=b"fbclid=NEWCLICK"), {})
    jar = _jar(written)
    old_fbc = f"fb.1.{(T0 - 86_400) * 1000}.OLDCLICK"  # a click the day before
    clock[0] += 60
    state, written = core.process(
        parts(f"_fbc={old_fbc}; _fbp={jar['_fbp']}; _tmw={jar['_tmw']}"), {}
    )
    assert written == []
    assert state.attribution is not None
    meta = state.attribution.touches["meta"]
    assert meta.click_id == "NEWCLICK" and meta.extra["fbc"] == jar["_fbc"]
    # A click the pixel saw after ours, on a page this server did not answer.
    newer_fbc = f"fb.1.{(T0 + 30) * 1000}.NEWERCLICK"
    state, written = core.process(
        parts(f"_fbc={newer_fbc}; _fbp={jar['_fbp']}; _tmw={jar['_tmw']}"), {}
    )
    assert "_tmw" in _jar(written)
    assert state.attribution is not None
    meta = state.attribution.touches["meta"]
    assert meta.click_id == "NEWERCLICK" and meta.extra["fbc"] == newer_fbc
    assert meta.first_seen == T0 + 60


def test_a_later_visit_keeps_the_clicks_utm_tags(clock: list[float]) -> None:
    core = make_core(**_meta_settings())
    _, written = core.process(parts(query=b"fbclid=F1&utm_source=facebook&utm_campaign=summer"), {})
    header = "; ".join(f"{k}={v}" for k, v in _jar(written).items())
    clock[0] += 7200  # past the hourly last_seen refresh
    state, written = core.process(parts(header, query=b"utm_source=newsletter"), {})
    assert state.attribution is not None
    meta = state.attribution.touches["meta"]
    assert meta.utm == {"utm_source": "facebook", "utm_campaign": "summer"}
    assert meta.last_seen == T0 + 7200 and "_tmw" in _jar(written)  # only last_seen moved


def test_the_cookie_never_holds_an_email_or_phone_from_the_landing(clock: list[float]) -> None:
    core = make_core()
    query = b"click_id=K1&email=jane.doe%40example.com&phone=%2B5511999998888&utm_term=a@b.co"
    state, written = core.process(parts(query=query), {})
    tmw = _jar(written)["_tmw"]
    assert "jane" not in tmw and "5511999998888" not in tmw and "a@b" not in tmw
    assert state.attribution is not None
    kwai = state.attribution.touches["kwai"]
    assert kwai.landing_url == "https://shop.test/p?click_id=K1"
    assert kwai.utm == {}
    # Only parameters tracking reads, one of them holding an address: dropped all the same.
    other, _ = make_core().process(parts(query=b"click_id=K2&utm_term=jane%40example.com"), {})
    assert other.attribution is not None
    assert other.attribution.touches["kwai"].landing_url == "https://shop.test/p?click_id=K2"
    # Nor does the page URL a view sees and events send, nor the referrer.
    assert state.attribution.client.url == "https://shop.test/p?click_id=K1"
    later, _ = core.process(parts(f"_tmw={tmw}", referer="https://f.test/?e=a@b.co&x=1"), {})
    assert later.attribution is not None
    assert later.attribution.client.referrer == "https://f.test/?x=1"


def test_one_url_with_kwai_and_bigo_clicks_gives_each_its_own_pixel(clock: list[float]) -> None:
    core = make_core()
    state, _ = core.process(parts(query=b"click_id=K1&pixel_id=PK&bbg=B1&pixel_id=PB"), {})
    assert state.attribution is not None
    touches = state.attribution.touches
    assert (touches["kwai"].pixel_id, touches["bigo"].pixel_id) == ("PK", "PB")
    # One click id and one pixel id, the usual landing: the pixel goes with that click.
    state, _ = core.process(parts("_bge_bbg=B0", query=b"click_id=K2&pixel_id=P2"), {})
    assert state.attribution is not None
    assert state.attribution.touches["kwai"].pixel_id == "P2"
    assert state.attribution.touches["bigo"].pixel_id is None


def test_an_fbc_older_than_the_window_brings_no_click(clock: list[float]) -> None:
    """Meta keeps _fbc for 90 days: once its click is older than the attribution window
    (pruned from the session, or the session expired), the cookie does not bring it back as
    a new click. A fresh _fbc does bring its click; the fbp counts either way."""
    core = make_core(cookie_max_age=DAY)
    fbp = "fb.1.1700000000000.123456789"
    old = f"fb.1.{(T0 - 2 * DAY) * 1000}.IwAR_old"
    state, written = core.process(parts(f"_fbc={old}; _fbp={fbp}"), {})
    assert state.attribution is not None
    meta = state.attribution.touches.get("meta")
    assert meta is not None and meta.click_id is None and meta.extra.get("fbp") == fbp
    assert "fbc" not in meta.extra
    assert all("IwAR_old" not in w for w in written)
    fresh = f"fb.1.{(T0 - 600) * 1000}.IwAR_new"
    state, written = core.process(parts(f"_fbc={fresh}"), {})
    assert state.attribution is not None
    assert state.attribution.touches["meta"].click_id == "IwAR_new"
    # Only an old _fbc and Meta not configured: nothing at all is captured or written.
    state, written = core.process(parts(f"_fbc={old}"), {})
    assert written == [] and state.attribution is not None
    assert state.attribution.touches == {}
