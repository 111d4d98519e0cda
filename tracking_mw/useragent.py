"""User-agent parsing: lazy, cached, bounded, with a cheap bot flag for the hot path.

The answers (device, OS, browser, bot flag) are those of the ``user-agents`` library. Parsing a
new agent with its pure-Python resolver costs about a millisecond, and its own cache holds only
200 agents, so this module keeps a larger cache of its own (a repeated agent costs one dict
lookup) and, when ``ua-parser-rs`` is installed (extra ``fast-ua``), feeds ``user-agents`` the
results of ua-parser's native resolver over the same regex set. The native path is used only if
it agrees with the pure-Python one on a probe set at first use; otherwise the slow path stays.

Agents longer than :data:`MAX_USER_AGENT` characters are truncated before parsing: real agents
are a few hundred characters, and a 1 MB header must not cost a 1 MB regex scan.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from user_agents.parsers import UserAgent

__all__ = ["MAX_USER_AGENT", "UserAgentInfo", "is_bot", "parse_user_agent", "resolver_name"]

logger = logging.getLogger("tracking_mw")

MAX_USER_AGENT = 1024
_CACHE_SIZE = 10_000

# Agents whose answers the native resolver must reproduce before it is trusted.
_PROBES = (
    "Mozilla/5.0 (Linux; Android 13; SM-A536B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1",
    "curl/8.5.0",
    "",
)


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    """What ``user-agents`` says about one agent string."""

    browser: str
    browser_version: str
    os: str
    os_version: str
    device: str
    device_brand: str | None
    device_model: str | None
    is_mobile: bool
    is_tablet: bool
    is_pc: bool
    is_bot: bool

    @property
    def device_type(self) -> str:
        """One of ``bot``, ``mobile``, ``tablet``, ``pc``, ``other``."""
        if self.is_bot:
            return "bot"
        if self.is_mobile:
            return "mobile"
        if self.is_tablet:
            return "tablet"
        if self.is_pc:
            return "pc"
        return "other"


def _python_resolve(ua: str) -> UserAgent:
    # Imported on first use: user-agents compiles about a thousand regexes at import (~1 s).
    from user_agents.parsers import UserAgent

    return UserAgent(ua)


def _native_resolver() -> Callable[[str], UserAgent] | None:
    from user_agents.parsers import (
        UserAgent,
        parse_browser,
        parse_device,
        parse_operating_system,
    )

    try:
        from ua_parser import Domain, load_lazy_builtins
        from ua_parser.regex import Resolver
    except ImportError:
        return None
    resolver = Resolver(load_lazy_builtins())
    everything = Domain.ALL

    def resolve(ua: str) -> UserAgent:
        r: Any = resolver(ua, everything)
        u, o, d = r.user_agent, r.os, r.device
        obj = UserAgent.__new__(UserAgent)
        obj.ua_string = ua
        # The legacy resolver reports no patch_minor for browsers: drop it to match.
        obj.browser = (
            parse_browser(u.family, u.major, u.minor, u.patch)
            if u is not None
            else parse_browser("Other")
        )
        obj.os = (
            parse_operating_system(o.family, o.major, o.minor, o.patch, o.patch_minor)
            if o is not None
            else parse_operating_system("Other")
        )
        obj.device = (
            parse_device(d.family, d.brand, d.model)
            if d is not None
            else parse_device("Other", None, None)
        )
        return obj

    return resolve


def _info(ua: UserAgent) -> UserAgentInfo:
    return UserAgentInfo(
        browser=ua.browser.family,
        browser_version=ua.browser.version_string,
        os=ua.os.family,
        os_version=ua.os.version_string,
        device=ua.device.family,
        device_brand=ua.device.brand,
        device_model=ua.device.model,
        is_mobile=bool(ua.is_mobile),
        is_tablet=bool(ua.is_tablet),
        is_pc=bool(ua.is_pc),
        is_bot=bool(ua.is_bot),
    )


class _Parser:
    """Picks the resolver once (lazily) and caches answers per agent string."""

    def __init__(self) -> None:
        self._resolve: Callable[[str], UserAgent] | None = None
        self.name = "unresolved"
        self._cache: dict[str, UserAgentInfo] = {}
        self._lock = threading.Lock()

    def _pick(self) -> Callable[[str], UserAgent]:
        with self._lock:
            if self._resolve is not None:
                return self._resolve
            chosen: Callable[[str], UserAgent] = _python_resolve
            name = "user-agents"
            try:
                native = _native_resolver()
                if native is not None and all(
                    _info(native(p)) == _info(_python_resolve(p)) for p in _PROBES
                ):
                    chosen, name = native, "user-agents+ua-parser-rs"
            except Exception:  # a broken optional extension must not break parsing
                logger.warning("tracking_mw: native user-agent resolver unusable; using Python")
            self.name = name
            self._resolve = chosen
            return chosen

    def parse(self, ua: str) -> UserAgentInfo:
        if len(ua) > MAX_USER_AGENT:
            ua = ua[:MAX_USER_AGENT]
        hit = self._cache.get(ua)
        if hit is not None:
            return hit
        resolve = self._resolve or self._pick()
        try:
            info = _info(resolve(ua))
        except Exception:  # never let a parser bug reach the request
            info = _UNKNOWN
        cache = self._cache
        if len(cache) >= _CACHE_SIZE:
            # Drop the oldest tenth at once, so eviction is rare and the hit path stays a lookup.
            try:
                for key in list(cache)[: _CACHE_SIZE // 10]:
                    cache.pop(key, None)
            except RuntimeError:  # resized by another thread meanwhile; harmless
                pass
        cache[ua] = info
        return info


_UNKNOWN = UserAgentInfo(
    browser="Other",
    browser_version="",
    os="Other",
    os_version="",
    device="Other",
    device_brand=None,
    device_model=None,
    is_mobile=False,
    is_tablet=False,
    is_pc=False,
    is_bot=False,
)

_parser = _Parser()


def parse_user_agent(ua: str | None) -> UserAgentInfo:
    """Parse ``ua`` (cached; truncated to :data:`MAX_USER_AGENT` characters first)."""
    if not ua:
        return _UNKNOWN
    return _parser.parse(ua)


def is_bot(ua: str | None) -> bool:
    """Whether ``ua`` is a crawler according to ``user-agents`` (cached)."""
    if not ua:
        return False
    return _parser.parse(ua).is_bot


def resolver_name() -> str:
    """Which resolver answers: ``user-agents`` or ``user-agents+ua-parser-rs``."""
    _parser._resolve or _parser._pick()
    return _parser.name
