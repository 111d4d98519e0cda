"""Settings: typed, keyword-only, validated when built, readable from ``TRACKING_*`` variables.

Every platform is a small frozen value object; a platform left as ``None`` is not configured.
A platform whose settings are only half given is a :class:`ConfigurationError` at construction,
so a bad deploy fails at startup instead of losing conversions later.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import numbers
import os
import re
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, TypeVar, Unpack

from ._errors import ConfigurationError

__all__ = [
    "BigoConfig",
    "DeliveryConfig",
    "KwaiConfig",
    "MetaConfig",
    "RoibestConfig",
    "RoktConfig",
    "Secret",
    "Settings",
    "SettingsOverrides",
    "TiktokConfig",
]

PLATFORMS = ("meta", "kwai", "bigo", "rokt", "roibest", "tiktok")
ROKT_PODS = ("us1", "us2", "eu1", "au1")
# Header budget: a browser drops a Set-Cookie line over 4,096 bytes; keep a small margin.
MAX_SET_COOKIE_BYTES = 4093

_T = TypeVar("_T")


class Secret:
    """A credential whose ``repr``/``str`` never show its value. ``reveal()`` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: Secret | str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError("a secret must be a string")
        self._value = value

    def reveal(self) -> str:
        """The secret value itself; pass it to a platform, never to a log."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def _secret(value: Secret | str | None, name: str) -> Secret | None:
    if value is None:
        return None
    s = Secret(value) if not isinstance(value, Secret) else value
    if not s.reveal().strip():
        raise ConfigurationError(f"{name} is empty")
    return s


def _base_url(value: str, name: str) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
        raise ConfigurationError(
            f"{name} must be an http(s) URL such as https://host[:port][/prefix]"
        )
    return value.rstrip("/")


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, kw_only=True)
class MetaConfig:
    """Meta Conversions API: one pixel (dataset) and its access token."""

    pixel_id: str
    access_token: Secret
    test_event_code: str | None = None
    api_version: str = "v25.0"
    base_url: str = "https://graph.facebook.com"

    def __post_init__(self) -> None:
        if not self.pixel_id or not str(self.pixel_id).strip():
            raise ConfigurationError("Meta needs a pixel id: set TRACKING_META_PIXEL_ID")
        _set(self, "pixel_id", str(self.pixel_id).strip())
        if not self.access_token:
            raise ConfigurationError("Meta needs an access token: set TRACKING_META_ACCESS_TOKEN")
        _set(self, "access_token", _secret(self.access_token, "TRACKING_META_ACCESS_TOKEN"))
        if not re.fullmatch(r"v\d+\.\d+", self.api_version):
            raise ConfigurationError("TRACKING_META_API_VERSION must look like v25.0")
        _set(self, "base_url", _base_url(self.base_url, "TRACKING_META_BASE_URL"))


@dataclass(frozen=True, kw_only=True)
class KwaiConfig:
    """Kwai Event API: an access token per pixel id (``"*"`` is the token for every pixel)."""

    access_tokens: Mapping[str, Secret]
    test: bool = False
    base_url: str = "https://www.adsnebula.com"

    def __post_init__(self) -> None:
        tokens = {
            str(k).strip(): _secret(v, f"Kwai token for pixel {k}")
            for k, v in dict(self.access_tokens).items()
        }
        if not tokens:
            raise ConfigurationError(
                "Kwai needs access tokens: set TRACKING_KWAI_ACCESS_TOKENS=pixel:token,..."
            )
        _set(self, "access_tokens", tokens)
        _set(self, "base_url", _base_url(self.base_url, "TRACKING_KWAI_BASE_URL"))

    def token_for(self, pixel_id: str | None) -> Secret | None:
        """The token of this pixel's ad account, else the catch-all token, else None."""
        if pixel_id and pixel_id in self.access_tokens:
            return self.access_tokens[pixel_id]
        return self.access_tokens.get("*")


@dataclass(frozen=True, kw_only=True)
class BigoConfig:
    """Bigo Web Events API: no credentials; ``pixel_id`` is a fallback for landings without one."""

    pixel_id: str | None = None
    base_url: str = "https://api.bytegle.site"

    def __post_init__(self) -> None:
        _set(self, "base_url", _base_url(self.base_url, "TRACKING_BIGO_BASE_URL"))


@dataclass(frozen=True, kw_only=True)
class RoktConfig:
    """Rokt Event API (mParticle): key and secret for HTTP Basic auth, and the data pod."""

    api_key: Secret
    api_secret: Secret
    pod: str = "us1"
    environment: Literal["production", "development"] = "production"
    base_url: str | None = None

    def __post_init__(self) -> None:
        if not self.api_key or not self.api_secret:
            raise ConfigurationError(
                "Rokt needs both TRACKING_ROKT_API_KEY and TRACKING_ROKT_API_SECRET"
            )
        _set(self, "api_key", _secret(self.api_key, "TRACKING_ROKT_API_KEY"))
        _set(self, "api_secret", _secret(self.api_secret, "TRACKING_ROKT_API_SECRET"))
        pod = str(self.pod).strip().lower()
        if pod not in ROKT_PODS:
            raise ConfigurationError(f"TRACKING_ROKT_POD must be one of {', '.join(ROKT_PODS)}")
        _set(self, "pod", pod)
        if self.environment not in ("production", "development"):
            raise ConfigurationError("TRACKING_ROKT_ENVIRONMENT must be production or development")
        base = self.base_url or f"https://s2s.{pod}.mparticle.com"
        _set(self, "base_url", _base_url(base, "TRACKING_ROKT_BASE_URL"))


@dataclass(frozen=True, kw_only=True)
class RoibestConfig:
    """ROIBest reporting API. ``channel`` picks the event-name vocabulary (default Meta's)."""

    link_param: str = "link_id"
    channel: str | None = None
    base_url: str = "https://sdk-report.roibestopenapi.com"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", self.link_param or ""):
            raise ConfigurationError("TRACKING_ROIBEST_LINK_PARAM must be a plain parameter name")
        if self.channel is not None:
            ch = self.channel.strip().lower()
            if ch not in ("meta", "kwai", "bigo", "tiktok"):
                raise ConfigurationError(
                    "TRACKING_ROIBEST_CHANNEL must be one of meta, kwai, bigo, tiktok"
                )
            _set(self, "channel", ch)
        _set(self, "base_url", _base_url(self.base_url, "TRACKING_ROIBEST_BASE_URL"))


@dataclass(frozen=True, kw_only=True)
class TiktokConfig:
    """TikTok Events API 2.0: a pixel code and an access token."""

    pixel_id: str
    access_token: Secret
    test_event_code: str | None = None
    base_url: str = "https://business-api.tiktok.com"

    def __post_init__(self) -> None:
        if not self.pixel_id or not self.access_token:
            raise ConfigurationError(
                "TikTok needs both TRACKING_TIKTOK_PIXEL_ID and TRACKING_TIKTOK_ACCESS_TOKEN"
            )
        _set(self, "access_token", _secret(self.access_token, "TRACKING_TIKTOK_ACCESS_TOKEN"))
        _set(self, "base_url", _base_url(self.base_url, "TRACKING_TIKTOK_BASE_URL"))


def _number(value: object, name: str, *, zero: bool = False) -> float:
    """``value`` as a float if it is a finite number > 0 (>= 0 with ``zero``).

    NaN passes every ``<=`` test, so it is checked for by name: a NaN timeout or retention
    would be accepted and break later, far from its cause.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigurationError(f"{name} must be a number, not {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ConfigurationError(f"{name} must be a finite number {bound}, not {value!r}")
    return number


def _count(value: object, name: str) -> int:
    """``value`` if it is a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigurationError(f"{name} must be a whole number >= 1, not {value!r}")
    return int(value)


def _per_platform(value: object, name: str) -> dict[str, object]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must map platform names to numbers")
    for key in value:
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"{name}: {key!r} is not a platform name")
    return dict(value)


# The outbox URL options every store reads, in seconds (see OutboxOptions).


def _check_outbox_options(url: str) -> None:
    """The common options of the outbox URL, checked as the store will read them (the store
    checks the rest, its own options, when it opens)."""
    # Imported here: the delivery package imports this module.
    from .delivery._base import OutboxOptions

    OutboxOptions.from_url(url, allowed=None)


@dataclass(frozen=True, kw_only=True)
class DeliveryConfig:
    """How the dispatcher sends: attempts, backoff, leases, timeouts, per-platform limits.

    Every number must be finite; durations are seconds > 0 (``shutdown_grace`` may be 0).
    ``concurrency`` maps a platform to its requests in flight at once (a whole number >= 1;
    default 4); ``rate_limits`` maps a platform to the events per second it may receive
    (> 0; leave a platform out for no limit). A bad value is a :class:`ConfigurationError`
    naming the setting, at construction.
    """

    max_attempts: int = 12
    backoff_base: float = 1.0
    backoff_cap: float = 600.0
    lease_seconds: float = 60.0
    timeout: float = 10.0
    poll_interval: float = 0.2
    shutdown_grace: float = 5.0
    max_age_seconds: float = 7 * 86400.0
    concurrency: Mapping[str, int] = field(default_factory=dict)
    rate_limits: Mapping[str, float] = field(default_factory=lambda: {"rokt": 270.0})

    def __post_init__(self) -> None:
        _set(self, "max_attempts", _count(self.max_attempts, "DeliveryConfig.max_attempts"))
        for name in (
            "backoff_base",
            "backoff_cap",
            "lease_seconds",
            "timeout",
            "poll_interval",
            "shutdown_grace",
            "max_age_seconds",
        ):
            value = _number(
                getattr(self, name), f"DeliveryConfig.{name}", zero=name == "shutdown_grace"
            )
            _set(self, name, value)
        if self.backoff_cap < self.backoff_base:
            raise ConfigurationError(
                "DeliveryConfig.backoff_cap must be >= DeliveryConfig.backoff_base"
            )
        concurrency = _per_platform(self.concurrency, "DeliveryConfig.concurrency")
        _set(
            self,
            "concurrency",
            {k: _count(v, f"DeliveryConfig.concurrency[{k!r}]") for k, v in concurrency.items()},
        )
        rates = _per_platform(self.rate_limits, "DeliveryConfig.rate_limits")
        _set(
            self,
            "rate_limits",
            {k: _number(v, f"DeliveryConfig.rate_limits[{k!r}]") for k, v in rates.items()},
        )

    def concurrency_for(self, platform: str) -> int:
        """Requests in flight at once to one platform."""
        return int(self.concurrency.get(platform, 4))


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything tracking_mw needs, validated at construction.

    Build it in code (``Settings(secret_key="...", meta=MetaConfig(...))``) or from the
    environment with :meth:`from_env`. ``secret_key`` accepts one key or a list, newest first:
    cookies are signed with the newest and accepted with any listed key (rotation).
    """

    secret_key: Sequence[Secret | str] | Secret | str
    cookie_name: str = "_tmw"
    cookie_max_age: int = 28 * 86400
    cookie_secure: bool = True
    cookie_domain: str | None = None
    cookie_samesite: Literal["lax", "strict", "none"] = "lax"
    write_meta_cookies: bool = True
    meta_cookie_max_age: int = 90 * 86400
    trusted_proxies: Sequence[str | _Network] = ()
    #: The header the trusted proxies write the client's address into: ``x-forwarded-for``
    #: (nginx, HAProxy's forwardfor, cloud load balancers) or ``forwarded`` (RFC 7239). Only
    #: that one is read: a proxy passes the other through as the client sent it.
    proxy_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"
    capture_bots: bool = False
    consent: Callable[[MutableMapping[str, Any]], bool] | None = None
    phone_region: str = "BR"
    meta: MetaConfig | None = None
    kwai: KwaiConfig | None = None
    bigo: BigoConfig | None = field(default_factory=BigoConfig)
    rokt: RoktConfig | None = None
    roibest: RoibestConfig | None = field(default_factory=RoibestConfig)
    tiktok: TiktokConfig | None = None
    event_map: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    outbox: str = "sqlite:///tracking_outbox.sqlite3"
    #: With a Redis outbox: the SQLite file on this host that keeps track()'s events while
    #: Redis fails (see delivery/spool.py); None turns it off. Unused with other outboxes.
    outbox_spool: str | None = "tracking_outbox_spool.sqlite3"
    start_dispatcher: bool = True
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)

    def __post_init__(self) -> None:
        keys = self.secret_key
        if isinstance(keys, (str, Secret)):
            keys = [keys]
        secrets = tuple(Secret(k) for k in keys if (k.reveal() if isinstance(k, Secret) else k))
        if not secrets:
            raise ConfigurationError(
                "no secret key: set TRACKING_SECRET_KEY (comma-separated, newest first) "
                "or pass Settings(secret_key=...)"
            )
        if any(len(s.reveal()) < 16 for s in secrets):
            raise ConfigurationError("each TRACKING_SECRET_KEY must be at least 16 characters")
        _set(self, "secret_key", secrets)
        if not re.fullmatch(r"[A-Za-z0-9_\-.]{1,64}", self.cookie_name):
            raise ConfigurationError("TRACKING_COOKIE_NAME must be a plain cookie name")
        # Whole seconds (Max-Age is an integer); NaN and infinity are not numbers of seconds.
        for name, label in (
            ("cookie_max_age", "TRACKING_COOKIE_MAX_AGE"),
            ("meta_cookie_max_age", "meta_cookie_max_age"),
        ):
            try:
                seconds = _number(getattr(self, name), label)
            except ConfigurationError:
                raise ConfigurationError(f"{label} must be a positive number of seconds") from None
            _set(self, name, int(seconds))
            if int(seconds) <= 0:
                raise ConfigurationError(f"{label} must be a positive number of seconds")
        if self.cookie_domain is not None and not re.fullmatch(
            r"\.?[A-Za-z0-9\-.]{1,253}", self.cookie_domain
        ):
            raise ConfigurationError("TRACKING_COOKIE_DOMAIN must be a host name")
        samesite = str(self.cookie_samesite).lower()
        if samesite not in ("lax", "strict", "none"):
            raise ConfigurationError("cookie_samesite must be lax, strict or none")
        _set(self, "cookie_samesite", samesite)
        nets: list[_Network] = []
        for p in self.trusted_proxies:
            try:
                raw = p.strip() if isinstance(p, str) else p
                nets.append(ipaddress.ip_network(raw, strict=False))
            except ValueError as exc:
                raise ConfigurationError(
                    f"TRACKING_TRUSTED_PROXIES: {p!r} is not an IP address or CIDR"
                ) from exc
        _set(self, "trusted_proxies", tuple(nets))
        header = str(self.proxy_header).strip().lower()
        if header not in ("x-forwarded-for", "forwarded"):
            raise ConfigurationError("TRACKING_PROXY_HEADER must be x-forwarded-for or forwarded")
        _set(self, "proxy_header", header)
        if self.consent is not None and not callable(self.consent):
            raise ConfigurationError("consent must be a callable taking the scope/environ")
        if not re.fullmatch(r"[A-Z]{2}", self.phone_region):
            raise ConfigurationError(
                "TRACKING_PHONE_REGION must be an ISO 3166 alpha-2 code such as BR"
            )
        emap: dict[str, dict[str, str | None]] = {}
        for platform, table in dict(self.event_map).items():
            if platform not in PLATFORMS:
                raise ConfigurationError(
                    f"event_map: unknown platform {platform!r} (one of {', '.join(PLATFORMS)})"
                )
            emap[platform] = {str(k).strip().lower(): v for k, v in dict(table).items()}
        _set(self, "event_map", emap)
        if not re.match(r"^(sqlite|redis|rediss|memory)://", self.outbox):
            raise ConfigurationError(
                "TRACKING_OUTBOX must be sqlite:///path, redis://host:port/db or memory://"
            )
        _check_outbox_options(self.outbox)
        if self.outbox_spool is not None:
            if not isinstance(self.outbox_spool, str):
                raise ConfigurationError("TRACKING_OUTBOX_SPOOL must be a file path, or off")
            if not self.outbox_spool.strip():
                _set(self, "outbox_spool", None)

    def __repr__(self) -> str:
        # The dataclass repr, with the outbox URL's password masked as credentials are:
        # a Settings object shows up in debug pages and error reports' frame locals.
        shown = []
        for f in dataclasses.fields(self):
            if f.repr:
                value = getattr(self, f.name)
                if f.name == "outbox":
                    value = outbox_identity(value)
                shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @property
    def platforms(self) -> dict[str, object]:
        """The configured platforms by name."""
        return {p: getattr(self, p) for p in PLATFORMS if getattr(self, p) is not None}

    def replace(self, **changes: Unpack[SettingsOverrides]) -> Settings:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Unpack[SettingsOverrides]
    ) -> Settings:
        """Build settings from ``TRACKING_*`` variables; keyword ``overrides`` win over them."""
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}

        def get(name: str) -> str | None:
            v = env.get(name)
            return v.strip() if v is not None and v.strip() != "" else None

        v = get("TRACKING_SECRET_KEY")
        kw["secret_key"] = _csv(v, "TRACKING_SECRET_KEY") if v is not None else ()
        for attr, var, convert in _SIMPLE_ENV:
            if (v := get(var)) is not None:
                kw[attr] = convert(v, var)

        for attr, factory, required, optional in _CREDENTIAL_PLATFORMS:
            kw[attr] = _platform_from_env(
                get, attr.upper(), factory, required=required, optional=optional
            )
        tokens = get("TRACKING_KWAI_ACCESS_TOKENS")
        if tokens is not None:
            kwai_kw: dict[str, Any] = {"access_tokens": _kwai_tokens(tokens)}
            if (v := get("TRACKING_KWAI_TEST")) is not None:
                kwai_kw["test"] = _bool(v, "TRACKING_KWAI_TEST")
            if (v := get("TRACKING_KWAI_BASE_URL")) is not None:
                kwai_kw["base_url"] = v
            kw["kwai"] = KwaiConfig(**kwai_kw)
        elif given := [v for v in ("TRACKING_KWAI_TEST", "TRACKING_KWAI_BASE_URL") if get(v)]:
            raise ConfigurationError(
                f"Kwai is half configured ({' and '.join(given)} set): "
                "set TRACKING_KWAI_ACCESS_TOKENS"
            )
        if get("TRACKING_BIGO_ENABLED") is not None and not _bool(
            get("TRACKING_BIGO_ENABLED") or "", "TRACKING_BIGO_ENABLED"
        ):
            kw["bigo"] = None
        else:
            bigo_kw: dict[str, Any] = {}
            if (v := get("TRACKING_BIGO_PIXEL_ID")) is not None:
                bigo_kw["pixel_id"] = v
            if (v := get("TRACKING_BIGO_BASE_URL")) is not None:
                bigo_kw["base_url"] = v
            kw["bigo"] = BigoConfig(**bigo_kw)
        if get("TRACKING_ROIBEST_ENABLED") is not None and not _bool(
            get("TRACKING_ROIBEST_ENABLED") or "", "TRACKING_ROIBEST_ENABLED"
        ):
            kw["roibest"] = None
        else:
            rb_kw: dict[str, Any] = {}
            for attr, suffix in (
                ("link_param", "LINK_PARAM"),
                ("channel", "CHANNEL"),
                ("base_url", "BASE_URL"),
            ):
                if (v := get(f"TRACKING_ROIBEST_{suffix}")) is not None:
                    rb_kw[attr] = v
            kw["roibest"] = RoibestConfig(**rb_kw)

        kw.update(overrides)
        return cls(**kw)


class SettingsOverrides(TypedDict, total=False):
    """Keyword overrides of :class:`Settings`: any of its fields, with the same types.

    The type of ``**overrides`` in ``TrackingMiddleware(app, **overrides)``,
    :meth:`Settings.from_env`, :meth:`Settings.replace` and ``configure()``: a type checker
    catches a misspelt setting, and Starlette's ``Middleware(TrackingMiddleware, ...)`` and
    FastAPI's ``add_middleware`` type-check (their factory protocol cannot take ``**Any``).
    """

    secret_key: Sequence[Secret | str] | Secret | str
    cookie_name: str
    cookie_max_age: int
    cookie_secure: bool
    cookie_domain: str | None
    cookie_samesite: Literal["lax", "strict", "none"]
    write_meta_cookies: bool
    meta_cookie_max_age: int
    trusted_proxies: Sequence[str | _Network]
    proxy_header: Literal["x-forwarded-for", "forwarded"]
    capture_bots: bool
    consent: Callable[[MutableMapping[str, Any]], bool] | None
    phone_region: str
    meta: MetaConfig | None
    kwai: KwaiConfig | None
    bigo: BigoConfig | None
    rokt: RoktConfig | None
    roibest: RoibestConfig | None
    tiktok: TiktokConfig | None
    event_map: Mapping[str, Mapping[str, str | None]]
    outbox: str
    outbox_spool: str | None
    start_dispatcher: bool
    delivery: DeliveryConfig


def _platform_from_env(
    get: Callable[[str], str | None],
    prefix: str,
    factory: Callable[..., _T],
    *,
    required: Mapping[str, str],
    optional: Mapping[str, str],
) -> _T | None:
    given = {attr: get(f"TRACKING_{prefix}_{suffix}") for attr, suffix in required.items()}
    opt = {attr: get(f"TRACKING_{prefix}_{suffix}") for attr, suffix in optional.items()}
    base = get(f"TRACKING_{prefix}_BASE_URL")
    if all(v is None for v in given.values()):
        if any(v is not None for v in opt.values()) or base is not None:
            names = ", ".join(f"TRACKING_{prefix}_{s}" for s in required.values())
            raise ConfigurationError(f"{prefix.title()} is half configured: set {names}")
        return None
    missing = [f"TRACKING_{prefix}_{required[a]}" for a, v in given.items() if v is None]
    if missing:
        raise ConfigurationError(f"{prefix.title()} is half configured: set {', '.join(missing)}")
    kwargs: dict[str, Any] = {k: v for k, v in {**given, **opt}.items() if v is not None}
    if base is not None:
        kwargs["base_url"] = base
    return factory(**kwargs)


def _kwai_tokens(raw: str) -> dict[str, Secret]:
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if len(parts) == 1 and ":" not in parts[0]:
        return {"*": Secret(parts[0])}
    tokens: dict[str, Secret] = {}
    for part in parts:
        pixel, sep, token = part.partition(":")
        if not sep or not pixel.strip() or not token.strip():
            raise ConfigurationError(
                "TRACKING_KWAI_ACCESS_TOKENS must be pixel:token pairs separated by commas, "
                "or one bare token for every pixel"
            )
        tokens[pixel.strip()] = Secret(token.strip())
    return tokens


def _bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, not {value!r}")


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be a whole number, not {value!r}") from exc


def _text(value: str, name: str) -> str:
    return value


def outbox_identity(url: str) -> str:
    """``url`` with its password shown as ``***`` (that of a ``user:password@`` part, and a
    ``password=`` option: redis-py reads both): what names an outbox in ``repr(Settings)``
    and in a spool file several outboxes share."""
    head, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    after = rest[len(netloc) :]
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        # user:password keeps the user; a lone part may be a password in the wrong place.
        shown = userinfo.split(":", 1)[0] + ":***" if ":" in userinfo else "***"
        netloc = f"{shown}@{host}"
    path, qsep, query = after.partition("?")
    if qsep:
        options = [
            o.split("=", 1)[0] + "=***" if o.split("=", 1)[0].lower() == "password" else o
            for o in query.split("&")
        ]
        after = path + "?" + "&".join(options)
    return f"{head}://{netloc}{after}"


def _path_or_off(value: str, name: str) -> str | None:
    return None if value.strip().lower() in ("", "off", "false", "none", "0") else value.strip()


def _csv(value: str, name: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def _upper(value: str, name: str) -> str:
    return value.upper()


# Plain settings: (attribute, environment variable, converter).
_SIMPLE_ENV: tuple[tuple[str, str, Callable[[str, str], Any]], ...] = (
    ("cookie_name", "TRACKING_COOKIE_NAME", _text),
    ("cookie_max_age", "TRACKING_COOKIE_MAX_AGE", _int),
    ("cookie_secure", "TRACKING_COOKIE_SECURE", _bool),
    ("cookie_domain", "TRACKING_COOKIE_DOMAIN", _text),
    ("write_meta_cookies", "TRACKING_WRITE_META_COOKIES", _bool),
    ("trusted_proxies", "TRACKING_TRUSTED_PROXIES", _csv),
    ("proxy_header", "TRACKING_PROXY_HEADER", _text),
    ("capture_bots", "TRACKING_CAPTURE_BOTS", _bool),
    ("phone_region", "TRACKING_PHONE_REGION", _upper),
    ("outbox", "TRACKING_OUTBOX", _text),
    ("outbox_spool", "TRACKING_OUTBOX_SPOOL", _path_or_off),
    ("start_dispatcher", "TRACKING_START_DISPATCHER", _bool),
)

# Platforms with credentials: (attribute, config class, required and optional variables
# as attribute -> suffix of TRACKING_<PLATFORM>_).
_CREDENTIAL_PLATFORMS: tuple[
    tuple[str, Callable[..., Any], Mapping[str, str], Mapping[str, str]], ...
] = (
    (
        "meta",
        MetaConfig,
        {"pixel_id": "PIXEL_ID", "access_token": "ACCESS_TOKEN"},
        {"test_event_code": "TEST_EVENT_CODE", "api_version": "API_VERSION"},
    ),
    (
        "rokt",
        RoktConfig,
        {"api_key": "API_KEY", "api_secret": "API_SECRET"},
        {"pod": "POD", "environment": "ENVIRONMENT"},
    ),
    (
        "tiktok",
        TiktokConfig,
        {"pixel_id": "PIXEL_ID", "access_token": "ACCESS_TOKEN"},
        {"test_event_code": "TEST_EVENT_CODE"},
    ),
)
