"""Settings and Settings.from_env: every variable, validation, half-configured platforms."""

from __future__ import annotations

import dataclasses
import ipaddress
import typing
from typing import Any

import pytest

from tracking_mw._errors import ConfigurationError
from tracking_mw.config import (
    BigoConfig,
    DeliveryConfig,
    KwaiConfig,
    MetaConfig,
    RoibestConfig,
    RoktConfig,
    Secret,
    Settings,
    SettingsOverrides,
    TiktokConfig,
)

KEY = "k" * 32
BASE = {"TRACKING_SECRET_KEY": KEY}


def env(**kw: str) -> dict[str, str]:
    return {**BASE, **kw}


def test_defaults() -> None:
    s = Settings.from_env(environ=BASE)
    assert s.secret_key == (Secret(KEY),)
    assert s.cookie_name == "_tmw"
    assert s.cookie_max_age == 28 * 86400
    assert s.cookie_secure is True
    assert s.cookie_domain is None
    assert s.cookie_samesite == "lax"
    assert s.write_meta_cookies is True
    assert s.meta_cookie_max_age == 90 * 86400
    assert s.trusted_proxies == ()
    assert s.capture_bots is False
    assert s.meta is None and s.kwai is None and s.rokt is None and s.tiktok is None
    assert isinstance(s.bigo, BigoConfig)
    assert isinstance(s.roibest, RoibestConfig) and s.roibest.link_param == "link_id"
    assert s.outbox.startswith("sqlite:///")
    assert s.start_dispatcher is True


def test_missing_secret_key_says_what_to_set() -> None:
    with pytest.raises(ConfigurationError, match="TRACKING_SECRET_KEY"):
        Settings.from_env(environ={})
    with pytest.raises(ConfigurationError, match="TRACKING_SECRET_KEY"):
        Settings.from_env(environ={"TRACKING_SECRET_KEY": "  "})


def test_short_secret_key_rejected() -> None:
    with pytest.raises(ConfigurationError, match="16"):
        Settings.from_env(environ={"TRACKING_SECRET_KEY": "short"})


def test_key_list_newest_first() -> None:
    s = Settings.from_env(environ={"TRACKING_SECRET_KEY": f"{'a' * 20}, {'b' * 20} ,"})
    assert s.secret_key == (Secret("a" * 20), Secret("b" * 20))


@pytest.mark.parametrize(
    ("var", "value", "attr", "expected"),
    [
        ("TRACKING_COOKIE_NAME", "att", "cookie_name", "att"),
        ("TRACKING_COOKIE_MAX_AGE", "3600", "cookie_max_age", 3600),
        ("TRACKING_COOKIE_SECURE", "false", "cookie_secure", False),
        ("TRACKING_COOKIE_SECURE", "1", "cookie_secure", True),
        ("TRACKING_COOKIE_DOMAIN", ".shop.example", "cookie_domain", ".shop.example"),
        ("TRACKING_WRITE_META_COOKIES", "no", "write_meta_cookies", False),
        ("TRACKING_CAPTURE_BOTS", "yes", "capture_bots", True),
        ("TRACKING_PHONE_REGION", "us", "phone_region", "US"),
        ("TRACKING_OUTBOX", "memory://", "outbox", "memory://"),
        ("TRACKING_START_DISPATCHER", "off", "start_dispatcher", False),
    ],
)
def test_scalar_variables(var: str, value: str, attr: str, expected: Any) -> None:
    s = Settings.from_env(environ=env(**{var: value}))
    assert getattr(s, attr) == expected


def test_trusted_proxies() -> None:
    s = Settings.from_env(environ=env(TRACKING_TRUSTED_PROXIES="10.0.0.1, 192.168.0.0/16,::1"))
    assert s.trusted_proxies == (
        ipaddress.ip_network("10.0.0.1/32"),
        ipaddress.ip_network("192.168.0.0/16"),
        ipaddress.ip_network("::1/128"),
    )
    with pytest.raises(ConfigurationError, match="not an IP"):
        Settings.from_env(environ=env(TRACKING_TRUSTED_PROXIES="10.0.0.1,nope"))
    assert s.proxy_header == "x-forwarded-for"
    s = Settings.from_env(environ=env(TRACKING_PROXY_HEADER=" Forwarded "))
    assert s.proxy_header == "forwarded"
    with pytest.raises(ConfigurationError, match="TRACKING_PROXY_HEADER"):
        Settings.from_env(environ=env(TRACKING_PROXY_HEADER="x-real-ip"))


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("TRACKING_COOKIE_MAX_AGE", "soon"),
        ("TRACKING_COOKIE_MAX_AGE", "0"),
        ("TRACKING_COOKIE_SECURE", "maybe"),
        ("TRACKING_COOKIE_NAME", "bad name;"),
        ("TRACKING_COOKIE_DOMAIN", "exa mple.com"),
        ("TRACKING_PHONE_REGION", "BRA"),
        ("TRACKING_OUTBOX", "postgres://x"),
    ],
)
def test_bad_values_fail_at_construction(var: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=var):
        Settings.from_env(environ=env(**{var: value}))


def test_meta_from_env() -> None:
    s = Settings.from_env(
        environ=env(
            TRACKING_META_PIXEL_ID="123",
            TRACKING_META_ACCESS_TOKEN="tok-meta",
            TRACKING_META_TEST_EVENT_CODE="TEST1",
            TRACKING_META_API_VERSION="v24.0",
            TRACKING_META_BASE_URL="http://127.0.0.1:9/meta/",
        )
    )
    assert s.meta == MetaConfig(
        pixel_id="123",
        access_token=Secret("tok-meta"),
        test_event_code="TEST1",
        api_version="v24.0",
        base_url="http://127.0.0.1:9/meta",
    )


def test_kwai_from_env() -> None:
    s = Settings.from_env(
        environ=env(
            TRACKING_KWAI_ACCESS_TOKENS="p1:t1, p2:t2",
            TRACKING_KWAI_TEST="true",
            TRACKING_KWAI_BASE_URL="http://127.0.0.1:9/kwai",
        )
    )
    assert isinstance(s.kwai, KwaiConfig)
    assert s.kwai.token_for("p1") == Secret("t1")
    assert s.kwai.token_for("p2") == Secret("t2")
    assert s.kwai.token_for("p3") is None
    assert s.kwai.test is True
    bare = Settings.from_env(environ=env(TRACKING_KWAI_ACCESS_TOKENS="only"))
    assert bare.kwai is not None and bare.kwai.token_for("anything") == Secret("only")
    with pytest.raises(ConfigurationError, match="pixel:token"):
        Settings.from_env(environ=env(TRACKING_KWAI_ACCESS_TOKENS="a:b,c"))


def test_rokt_tiktok_bigo_roibest_from_env() -> None:
    s = Settings.from_env(
        environ=env(
            TRACKING_ROKT_API_KEY="key",
            TRACKING_ROKT_API_SECRET="sec",
            TRACKING_ROKT_POD="EU1",
            TRACKING_ROKT_ENVIRONMENT="development",
            TRACKING_TIKTOK_PIXEL_ID="TT1",
            TRACKING_TIKTOK_ACCESS_TOKEN="ttok",
            TRACKING_TIKTOK_TEST_EVENT_CODE="T9",
            TRACKING_BIGO_PIXEL_ID="bp",
            TRACKING_BIGO_BASE_URL="http://127.0.0.1:9/bigo",
            TRACKING_ROIBEST_LINK_PARAM="rb",
            TRACKING_ROIBEST_CHANNEL="Kwai",
            TRACKING_ROIBEST_BASE_URL="http://127.0.0.1:9/roibest",
        )
    )
    assert isinstance(s.rokt, RoktConfig)
    assert (s.rokt.pod, s.rokt.environment) == ("eu1", "development")
    assert s.rokt.base_url == "https://s2s.eu1.mparticle.com"
    assert isinstance(s.tiktok, TiktokConfig) and s.tiktok.test_event_code == "T9"
    assert s.bigo == BigoConfig(pixel_id="bp", base_url="http://127.0.0.1:9/bigo")
    assert s.roibest == RoibestConfig(
        link_param="rb", channel="kwai", base_url="http://127.0.0.1:9/roibest"
    )
    assert set(s.platforms) == {"rokt", "tiktok", "bigo", "roibest"}


def test_platforms_can_be_disabled() -> None:
    s = Settings.from_env(
        environ=env(TRACKING_BIGO_ENABLED="false", TRACKING_ROIBEST_ENABLED="false")
    )
    assert s.bigo is None and s.roibest is None


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"TRACKING_META_PIXEL_ID": "1"}, "TRACKING_META_ACCESS_TOKEN"),
        ({"TRACKING_META_ACCESS_TOKEN": "t"}, "TRACKING_META_PIXEL_ID"),
        ({"TRACKING_META_TEST_EVENT_CODE": "T"}, "TRACKING_META_PIXEL_ID"),
        ({"TRACKING_ROKT_API_KEY": "k"}, "TRACKING_ROKT_API_SECRET"),
        ({"TRACKING_ROKT_POD": "us1"}, "TRACKING_ROKT_API_KEY"),
        ({"TRACKING_TIKTOK_PIXEL_ID": "p"}, "TRACKING_TIKTOK_ACCESS_TOKEN"),
        ({"TRACKING_TIKTOK_BASE_URL": "http://x"}, "TRACKING_TIKTOK_PIXEL_ID"),
        ({"TRACKING_KWAI_TEST": "true"}, "TRACKING_KWAI_ACCESS_TOKENS"),
        ({"TRACKING_KWAI_BASE_URL": "http://x"}, "TRACKING_KWAI_ACCESS_TOKENS"),
    ],
)
def test_half_configured_platforms(given: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigurationError, match=missing):
        Settings.from_env(environ=env(**given))


def test_bad_platform_values() -> None:
    with pytest.raises(ConfigurationError, match="POD"):
        Settings.from_env(
            environ=env(
                TRACKING_ROKT_API_KEY="k", TRACKING_ROKT_API_SECRET="s", TRACKING_ROKT_POD="mars"
            )
        )
    with pytest.raises(ConfigurationError, match="API_VERSION"):
        Settings.from_env(
            environ=env(
                TRACKING_META_PIXEL_ID="1",
                TRACKING_META_ACCESS_TOKEN="t",
                TRACKING_META_API_VERSION="25",
            )
        )
    with pytest.raises(ConfigurationError, match="URL"):
        Settings.from_env(environ=env(TRACKING_BIGO_BASE_URL="ftp://x"))
    with pytest.raises(ConfigurationError, match="CHANNEL"):
        Settings.from_env(environ=env(TRACKING_ROIBEST_CHANNEL="myspace"))


def test_overrides_win_over_environment() -> None:
    s = Settings.from_env(environ=env(TRACKING_COOKIE_NAME="fromenv"), cookie_name="fromcode")
    assert s.cookie_name == "fromcode"


def test_secrets_masked_in_repr() -> None:
    s = Settings.from_env(
        environ=env(
            TRACKING_META_PIXEL_ID="123",
            TRACKING_META_ACCESS_TOKEN="meta-token-value",
            TRACKING_KWAI_ACCESS_TOKENS="p:kwai-token-value",
            TRACKING_ROKT_API_KEY="rokt-key-value",
            TRACKING_ROKT_API_SECRET="rokt-secret-value",
        )
    )
    text = repr(s) + str(s)
    for secret in (
        KEY,
        "meta-token-value",
        "kwai-token-value",
        "rokt-key-value",
        "rokt-secret-value",
    ):
        assert secret not in text
    assert "***" in text
    assert str(Secret("x")) == "***" and Secret("x").reveal() == "x"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw-value@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
        ("rediss://app:pw-value@h:6380/1?prefix=x", "rediss://app:***@h:6380/1?prefix=x"),
        ("redis://pw-value@h/0", "redis://***@h/0"),
        ("redis://h:6379/0?password=pw-value&prefix=x", "redis://h:6379/0?password=***&prefix=x"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("sqlite:///var/lib/app/outbox.sqlite3", "sqlite:///var/lib/app/outbox.sqlite3"),
    ],
)
def test_outbox_password_masked_in_repr(url: str, shown: str) -> None:
    s = Settings(secret_key=KEY, outbox=url)
    assert "pw-value" not in repr(s) and "pw-value" not in str(s)
    assert f"outbox={shown!r}" in repr(s)
    assert s.outbox == url  # the setting itself is unchanged


def test_replace_validates_again() -> None:
    s = Settings.from_env(environ=BASE)
    assert s.replace(cookie_secure=False).cookie_secure is False
    with pytest.raises(ConfigurationError):
        s.replace(cookie_name="a b")


def test_from_env_ignores_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKING_COOKIE_NAME", "process")
    s = Settings.from_env(environ=BASE)
    assert s.cookie_name == "_tmw"


def test_consent_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match="consent"):
        Settings(secret_key=KEY, consent="yes")  # type: ignore[arg-type]


def test_overrides_type_lists_every_setting_with_its_type() -> None:
    # The keyword overrides of the middlewares, from_env(), replace() and configure() are
    # typed by SettingsOverrides: it must follow Settings field for field.
    fields = {f.name for f in dataclasses.fields(Settings)}
    hints = typing.get_type_hints(Settings)
    overrides = typing.get_type_hints(SettingsOverrides)
    assert set(overrides) == fields
    assert {name: hints[name] for name in fields} == overrides
    assert not SettingsOverrides.__required_keys__


NAN = float("nan")
INF = float("inf")


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"concurrency": {"meta": 0}}, r"concurrency\['meta'\]"),
        ({"concurrency": {"meta": -1}}, r"concurrency\['meta'\]"),
        ({"concurrency": {"meta": 2.5}}, r"concurrency\['meta'\]"),
        ({"concurrency": {"meta": True}}, r"concurrency\['meta'\]"),
        ({"concurrency": {"": 2}}, "concurrency"),
        ({"rate_limits": {"rokt": 0}}, r"rate_limits\['rokt'\]"),
        ({"rate_limits": {"rokt": -5}}, r"rate_limits\['rokt'\]"),
        ({"rate_limits": {"rokt": NAN}}, r"rate_limits\['rokt'\]"),
        ({"rate_limits": {"rokt": INF}}, r"rate_limits\['rokt'\]"),
        ({"rate_limits": {"rokt": "270"}}, r"rate_limits\['rokt'\]"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": NAN}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"backoff_base": NAN}, "backoff_base"),
        ({"backoff_cap": INF}, "backoff_cap"),
        ({"lease_seconds": NAN}, "lease_seconds"),
        ({"lease_seconds": -1.0}, "lease_seconds"),
        ({"timeout": INF}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"poll_interval": NAN}, "poll_interval"),
        ({"shutdown_grace": -1.0}, "shutdown_grace"),
        ({"shutdown_grace": NAN}, "shutdown_grace"),
        ({"max_age_seconds": 0}, "max_age_seconds"),
        ({"max_age_seconds": NAN}, "max_age_seconds"),
        ({"max_age_seconds": 10**400}, "max_age_seconds"),
        ({"timeout": "10"}, "timeout"),
    ],
)
def test_bad_delivery_numbers_fail_at_construction(changes: dict[str, Any], named: str) -> None:
    # Each of these used to be accepted: concurrency 0 never delivered that platform, a
    # rate of 0 or less killed the dispatcher later, NaN passed every "<= 0" test.
    with pytest.raises(ConfigurationError, match="DeliveryConfig." + named):
        DeliveryConfig(**changes)


def test_good_delivery_numbers_are_kept() -> None:
    cfg = DeliveryConfig(
        max_attempts=3,
        timeout=5,
        shutdown_grace=0,
        concurrency={"meta": 8},
        rate_limits={"rokt": 100, "kwai": 2.5},
    )
    assert cfg.max_attempts == 3 and cfg.timeout == 5.0 and cfg.shutdown_grace == 0.0
    assert cfg.concurrency_for("meta") == 8 and cfg.concurrency_for("kwai") == 4
    assert cfg.rate_limits == {"rokt": 100.0, "kwai": 2.5}
    assert DeliveryConfig(rate_limits={}).rate_limits == {}


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-5", "soon", ""])
@pytest.mark.parametrize("option", ["retention", "dead_retention", "link_ttl"])
def test_bad_outbox_option_fails_at_construction(option: str, value: str) -> None:
    for url in ("memory://", "sqlite:///x.sqlite3", "redis://localhost:6379/0"):
        with pytest.raises(ConfigurationError, match=f"TRACKING_OUTBOX option {option}"):
            Settings(secret_key=KEY, outbox=f"{url}?{option}={value}")
    ok = Settings(secret_key=KEY, outbox=f"memory://?{option}=60&prefix=x")
    assert ok.outbox.endswith("prefix=x")  # the store checks its own options when opened


@pytest.mark.parametrize("field", ["cookie_max_age", "meta_cookie_max_age"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -5, 0, 0.5, "12", True])
def test_cookie_lifetimes_are_positive_whole_seconds(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match="must be a positive number of seconds"):
        Settings(secret_key=KEY, **{field: value})  # type: ignore[arg-type]


def test_cookie_lifetimes_kept_as_whole_seconds() -> None:
    s = Settings(secret_key=KEY, cookie_max_age=3600.7, meta_cookie_max_age=86400)  # type: ignore[arg-type]
    assert s.cookie_max_age == 3600 and s.meta_cookie_max_age == 86400
