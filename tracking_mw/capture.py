"""Pure functions: the parts of a request -> the ad identifiers it carries.

Nothing here knows about ASGI or WSGI; both middlewares hand the same raw parts (query bytes,
the ``Cookie`` header) to these functions, so both capture exactly the same thing.

Rules (see ``platform-notes.md``, "Identifiers"):

- Only the few keys we want are decoded; everything else is skipped without decoding.
  ``%XX`` is decoded once. A ``+`` is a space only in UTM tags (written by hand, like HTML
  form values); in identifiers it stays a ``+``: Kwai's click ids are standard base64
  (``hExEe+mallKjKqagFxg==``), and an id with a space in it is never valid. **The first
  occurrence of a repeated parameter wins**, under ASGI and WSGI alike (an ad platform's
  parameter is appended by the platform, and a second copy is more likely an injection).
- A value that is not valid UTF-8 after decoding, holds control characters, is empty or is
  longer than its cap is dropped, never repaired: a changed click id is worse than none.
  Dropped, it still counts as the first occurrence (a later copy is ignored all the same).
- Click ids are kept byte-identical otherwise (case and punctuation preserved).

Identifier table (URL parameter / cookie -> platform and field):

========  ==========================  ===========================  ============================
platform  URL click id                cookies                      stored as
========  ==========================  ===========================  ============================
kwai      ``click_id`` (+ pixel_id)   --                           click_id, pixel_id
bigo      ``bbg`` (+ pixel_id)        ``_bge_bbg``, ``_bge_ci``    click_id, pixel_id, cookie_id
meta      ``fbclid``                  ``_fbc``, ``_fbp``           click_id, extra fbc / fbp
rokt      ``rtid``                    --                           click_id
roibest   ``link_id`` (configurable)  --                           click_id
tiktok    ``ttclid``                  ``_ttp``                     click_id, extra ttp
========  ==========================  ===========================  ============================
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, unquote_to_bytes

__all__ = [
    "BIGO_COOKIE_CLICK",
    "BIGO_COOKIE_ID",
    "COOKIE_NAMES",
    "MAX_ID_LENGTH",
    "MAX_LONG_ID_LENGTH",
    "META_FBC_COOKIE",
    "META_FBP_COOKIE",
    "TIKTOK_COOKIE",
    "UTM_KEYS",
    "Incoming",
    "build_fbc",
    "build_fbp",
    "capture",
    "clean_id",
    "fbc_created_ms",
    "fbc_holds",
    "fbclid_of",
    "is_cookie_safe",
    "parse_cookies",
    "parse_query",
    "pixels_by_click",
    "query_names",
    "url_without_personal_data",
    "valid_fbc",
    "valid_fbp",
]

# A click id longer than this is not a click id. Bigo's bbg is about 200 characters and must
# never be cut ("invalid bbg"), so it gets the larger cap; anything over a cap is dropped.
MAX_ID_LENGTH = 512
MAX_LONG_ID_LENGTH = 1024
MAX_UTM_LENGTH = 256

UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "utm_id")

META_FBC_COOKIE = "_fbc"
META_FBP_COOKIE = "_fbp"
BIGO_COOKIE_CLICK = "_bge_bbg"
BIGO_COOKIE_ID = "_bge_ci"
TIKTOK_COOKIE = "_ttp"
COOKIE_NAMES = (META_FBC_COOKIE, META_FBP_COOKIE, BIGO_COOKIE_CLICK, BIGO_COOKIE_ID, TIKTOK_COOKIE)

# C0 controls, DEL and C1 controls: never part of an identifier, and CR/LF could split a
# header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# RFC 6265 cookie-octet: what may be written as a bare cookie value.
_COOKIE_OCTETS = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")
# fb.<subdomain index>.<creation ms>.<fbclid>[.<appendix>]: 4 or 5 parts, which Meta takes;
# a value of more parts would get the whole request rejected.
_FBC = re.compile(r"fb\.\d{1,2}\.\d{1,16}\.[^\s;,\"\\.]+(\.[^\s;,\"\\.]+)?")
# An fbclid: one segment of an _fbc (no dot, which would make the fbc built from it a value
# of more parts, or read back as another click id with an appendix).
_FBCLID = re.compile(r"[^\s;,\"\\.]+")
_FBP = re.compile(r"fb\.\d{1,2}\.\d{1,16}\.\d{1,12}(\.[A-Za-z0-9_\-]{1,16})?")


def clean_id(value: str | None, max_len: int = MAX_ID_LENGTH) -> str | None:
    """``value`` if it is a plausible identifier (non-empty, no control chars, short enough)."""
    if not value or len(value) > max_len:
        return None
    # Printable ASCII has no control characters: skip the regex for the usual id.
    if not (value.isascii() and value.isprintable()) and _CONTROL.search(value):
        return None
    return value


# Parameters whose "+" is a space (form encoding); in every other value it is a "+".
_FORM_VALUES = frozenset(UTM_KEYS)


def _decode(raw: bytes, plus_is_space: bool = True) -> str | None:
    """Decode one query component once (``%XX``, and ``+`` as a space if ``plus_is_space``);
    None if it is not UTF-8."""
    # bytes.find, not ``in``: ``b"+" in raw`` first tries the needle as an int and pays for
    # the TypeError, which costs more than the search.
    if plus_is_space and raw.find(b"+") >= 0:
        raw = raw.replace(b"+", b" ")
    if raw.find(b"%") >= 0:
        raw = unquote_to_bytes(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


@functools.lru_cache(maxsize=64)
def _encoded_names(names: tuple[str, ...]) -> frozenset[bytes]:
    return frozenset(n.encode("ascii") for n in names)


def parse_query(query: bytes, names: Iterable[str]) -> dict[str, str]:
    """The values of ``names`` in a raw query string; the first occurrence of a key wins
    (one whose value is not UTF-8 reads as empty). ``+`` is a space in UTM tags only.

    Only keys are looked at for every pair, and only wanted keys' values are decoded, so a
    64 KB query with 10,000 parameters costs one split. Never raises.
    """
    if not query:
        return {}
    return _parse_query(query, _encoded_names(tuple(names)))


def _parse_query(query: bytes, wanted: frozenset[bytes]) -> dict[str, str]:
    """:func:`parse_query` with the wanted names already encoded (the middleware's path)."""
    out: dict[str, str] = {}
    for pair in query.split(b"&"):
        key, sep, value = pair.partition(b"=")
        if key not in wanted:
            # Rare: an encoded key ("click%5Fid"); decode keys only when they could be one.
            if key.find(b"%") < 0 and key.find(b"+") < 0:
                continue
            dk = _decode(key)
            if dk is None or dk.encode("utf-8") not in wanted:
                continue
            key = dk.encode("utf-8")
        name = key.decode("ascii")
        if name in out or not sep:
            continue
        text: str | None
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        # "%" and "+" are ASCII, never part of a multi-byte character: test the text. Not
        # UTF-8 as it is: raw bytes and escapes together may still make UTF-8.
        if text is None or "%" in text or "+" in text:
            text = _decode(value, name in _FORM_VALUES)
        out[name] = "" if text is None else text
    return out


def _parse_query_text(query: str, wanted: frozenset[str]) -> dict[str, str]:
    """:func:`_parse_query` for a query already decoded as ASCII (same rules, same answers).

    The middleware checks a query for URL-safe ASCII once, for the landing URL, and then
    parses the text it has: no per-pair byte decoding.
    """
    out: dict[str, str] = {}
    for pair in query.split("&"):
        key, sep, value = pair.partition("=")
        if key not in wanted:
            if "%" not in key and "+" not in key:
                continue
            dk = _decode(key.encode("ascii"))
            if dk is None or dk not in wanted:
                continue
            key = dk
        if key in out or not sep:
            continue
        if "%" in value or "+" in value:
            decoded = _decode(value.encode("ascii"), key in _FORM_VALUES)
            value = "" if decoded is None else decoded
        out[key] = value
    return out


def _param_caps(names: Iterable[str]) -> dict[str, int]:
    """The longest valid value of each parameter :func:`capture` reads (see :func:`clean_id`)."""
    caps = dict.fromkeys(names, MAX_ID_LENGTH)
    caps["bbg"] = MAX_LONG_ID_LENGTH
    caps.update(dict.fromkeys(UTM_KEYS, MAX_UTM_LENGTH))
    return caps


def _checked_params(query: str, caps: Mapping[str, int]) -> dict[str, str | None]:
    """The wanted parameters (``caps``' names) of a query made of URL-safe printable ASCII
    without ``%`` and ``+``, already validated for ``_capture(..., checked=True)``.

    Such a query needs no decoding and holds no control characters, so a value is a valid
    identifier when it is non-empty and within its cap. An invalid first occurrence is kept
    as None, so a later copy of the parameter is ignored exactly as :func:`parse_query`
    followed by :func:`clean_id` would ignore it.
    """
    out: dict[str, str | None] = {}
    for pair in query.split("&"):
        key, sep, value = pair.partition("=")
        cap = caps.get(key)
        if cap is None or not sep or key in out:
            continue
        out[key] = value if value and len(value) <= cap else None
    return out


def parse_cookies(header: str | None, names: Iterable[str]) -> dict[str, str]:
    """The values of ``names`` in a ``Cookie`` header; the first occurrence wins.

    Browsers send the most specific cookie (longest path) first. Surrounding double quotes
    are removed; nothing else is decoded (cookie values are opaque).
    """
    if not header:
        return {}
    wanted = names if isinstance(names, (set, frozenset)) else set(names)
    out: dict[str, str] = {}
    for chunk in header.split(";"):
        key, sep, value = chunk.partition("=")
        key = key.strip()
        if not sep or key not in wanted or key in out:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        out[key] = value
    return out


def is_cookie_safe(value: str) -> bool:
    """Whether ``value`` may be written verbatim as a cookie value (RFC 6265 cookie-octets)."""
    return bool(_COOKIE_OCTETS.fullmatch(value))


def valid_fbc(value: str | None) -> bool:
    """Whether ``value`` looks like Meta's ``_fbc`` (``fb.1.<ms>.<fbclid>[.<appendix>]``)."""
    return (
        bool(value) and len(value or "") <= MAX_ID_LENGTH + 64 and bool(_FBC.fullmatch(value or ""))
    )


def valid_fbp(value: str | None) -> bool:
    """Whether ``value`` looks like Meta's ``_fbp`` (``fb.1.<ms>.<random>[.<appendix>]``)."""
    return bool(value) and bool(_FBP.fullmatch(value or ""))


def fbc_holds(fbc: str, fbclid: str) -> bool:
    """Whether the ``fbc`` value was built from ``fbclid`` (an appendix may follow it)."""
    parts = fbc.split(".", 3)
    if len(parts) < 4:
        return False
    tail = parts[3]
    return tail == fbclid or tail.startswith(fbclid + ".")


def fbc_created_ms(fbc: str) -> int | None:
    """The creation time (Unix ms) an ``fbc`` value carries, if it is readable."""
    parts = fbc.split(".", 3)  # fb.<subdomain index>.<creation ms>.<fbclid>
    return int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None


def fbclid_of(fbc: str) -> str | None:
    """The fbclid inside an ``fbc`` value (without a trailing appendix), if any."""
    parts = fbc.split(".")
    if len(parts) < 4:
        return None
    # A 5-part value carries an appendix after the fbclid; fbclids themselves have no dots.
    return parts[3] or None


def build_fbc(fbclid: str, now_ms: int) -> str:
    """``fb.1.<creation ms>.<fbclid>``, the format Meta's own tools write."""
    return f"fb.1.{now_ms}.{fbclid}"


def build_fbp(now_ms: int, rand: int) -> str:
    """``fb.1.<creation ms>.<random 0..2147483647>``, the format the Meta pixel writes."""
    return f"fb.1.{now_ms}.{rand}"


@dataclass(slots=True)
class Incoming:
    """What this request says about one platform.

    ``click_id`` None means the request carried only secondary identifiers (a cookie such as
    ``_fbp`` or ``_bge_ci``) that refresh an existing touch's ``extra``. ``from_cookie``: the
    click id came from a pixel cookie (``_bge_bbg``, ``_fbc``), not from this request's
    query: a click some page saw before, maybe long before (see ``Core.process``).
    """

    platform: str
    click_id: str | None = None
    pixel_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    from_cookie: bool = False


def query_names(link_param: str | None) -> tuple[str, ...]:
    """Every query parameter :func:`capture` looks at."""
    names = ["click_id", "pixel_id", "bbg", "fbclid", "rtid", "ttclid", *UTM_KEYS]
    if link_param:
        names.append(link_param)
    return tuple(dict.fromkeys(names))


def capture(
    params: Mapping[str, str],
    cookies: Mapping[str, str],
    *,
    link_param: str | None = "link_id",
) -> tuple[dict[str, Incoming], dict[str, str]]:
    """Identifiers per platform, and the UTM tags, from decoded parameters and cookies.

    ``link_param`` is ROIBest's parameter name, or None when ROIBest is switched off (then
    ``link_id``, a generic name, is not collected).
    Meta's ``fbc``/``fbp`` construction needs the stored session and the clock, so it is done
    by the caller; here ``_fbc``/``_fbp`` are only validated and passed along.
    """
    return _capture(params, cookies, link_param, False)


def _capture(
    params: Mapping[str, str | None],
    cookies: Mapping[str, str],
    link_param: str | None,
    checked: bool,
) -> tuple[dict[str, Incoming], dict[str, str]]:
    """:func:`capture`; ``checked`` says the parameters are validated already (a value is a
    valid identifier or UTM tag for its name, or None for absent), see :func:`_checked_params`.
    """
    found: dict[str, Incoming] = {}
    get = params.get
    if checked:
        pixel = get("pixel_id")
        click = get("click_id")
        bbg = get("bbg")
        fbclid = get("fbclid")
        rtid = get("rtid")
        link = get(link_param) if link_param else None
        ttclid = get("ttclid")
    else:
        # Most requests carry one platform's parameters: absent ones cost a lookup, not a call.
        pixel = clean_id(v) if (v := get("pixel_id")) is not None else None
        click = clean_id(v) if (v := get("click_id")) is not None else None
        bbg = clean_id(v, MAX_LONG_ID_LENGTH) if (v := get("bbg")) is not None else None
        fbclid = clean_id(v) if (v := get("fbclid")) is not None else None
        rtid = clean_id(v) if (v := get("rtid")) is not None else None
        link = clean_id(v) if link_param and (v := get(link_param)) is not None else None
        ttclid = clean_id(v) if (v := get("ttclid")) is not None else None
    if fbclid is not None and not _FBCLID.fullmatch(fbclid):
        fbclid = None

    if click:
        found["kwai"] = Incoming("kwai", click, pixel)

    from_url = bbg is not None
    if cookies:
        if bbg is None:
            bbg = clean_id(cookies.get(BIGO_COOKIE_CLICK), MAX_LONG_ID_LENGTH)
        bigo_ci = clean_id(cookies.get(BIGO_COOKIE_ID))
        fbc = cookies.get(META_FBC_COOKIE)
        fbc = fbc if valid_fbc(fbc) else None
        fbp = cookies.get(META_FBP_COOKIE)
        fbp = fbp if valid_fbp(fbp) else None
        ttp = clean_id(cookies.get(TIKTOK_COOKIE))
    else:
        bigo_ci = fbc = fbp = ttp = None
    if bbg is not None or bigo_ci is not None:
        inc = Incoming("bigo", bbg, pixel if from_url else None)
        inc.from_cookie = bbg is not None and not from_url
        if bigo_ci is not None:
            inc.extra["cookie_id"] = bigo_ci
        found["bigo"] = inc

    fbc_click = False
    if fbclid is None and fbc is not None:
        # The Meta pixel saw a click we did not: its cookie carries the fbclid.
        fbclid = clean_id(fbclid_of(fbc))
        fbc_click = fbclid is not None
    if fbclid is not None or fbp is not None:
        inc = Incoming("meta", fbclid)
        inc.from_cookie = fbc_click
        if fbc is not None and fbclid is not None and fbc_holds(fbc, fbclid):
            inc.extra["fbc"] = fbc
        if fbp is not None:
            inc.extra["fbp"] = fbp
        found["meta"] = inc

    if rtid:
        found["rokt"] = Incoming("rokt", rtid)

    if link:
        found["roibest"] = Incoming("roibest", link)

    if ttclid is not None or ttp is not None:
        inc = Incoming("tiktok", ttclid)
        if ttp is not None:
            inc.extra["ttp"] = ttp
        found["tiktok"] = inc

    utm: dict[str, str] = {}
    for key in UTM_KEYS:
        v = get(key)
        # A tag holding an e-mail address is personal data: never stored.
        if (
            v is not None
            and (checked or (v := clean_id(v, MAX_UTM_LENGTH)) is not None)
            and v.find("@") < 0
        ):
            utm[key] = v
    return found, utm


def pixels_by_click(query: bytes) -> dict[str, str | None]:
    """Kwai's and Bigo's pixel ids when one query carries both platforms' click ids
    (``click_id`` and ``bbg``): a ``pixel_id`` belongs to the click id before it, the first
    one after each click id counting; a click id with none after it has none.

    Rare (each platform builds its own landing URLs), so only then is the query read in
    order; otherwise the one ``pixel_id`` goes with the one click id.
    """
    out: dict[str, str | None] = {}
    owner: str | None = None
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if key.find(b"%") >= 0 or key.find(b"+") >= 0:
            key = (_decode(key) or "").encode("utf-8")
        if key == b"click_id":
            owner = "kwai"
        elif key == b"bbg":
            owner = "bigo"
        elif key == b"pixel_id" and owner is not None and owner not in out:
            out[owner] = clean_id(_decode(value, False))
    return {"kwai": out.get("kwai"), "bigo": out.get("bigo")}


# Query parameters that carry personal data: never kept in the landing URL the cookie stores
# (it is signed, not encrypted) nor sent as a page URL. Names containing one of these words...
_PERSONAL_WORDS = (
    "email", "e-mail", "phone", "telefone", "celular", "whatsapp", "cpf", "cnpj", "password",
    "senha", "birth", "address", "endereco",
)  # fmt: skip
# ...or exactly one of these (short words that are parts of innocent names).
_PERSONAL_NAMES = frozenset(
    (
        "mail", "tel", "mobile", "name", "fn", "ln", "first_name", "last_name", "firstname",
        "lastname", "full_name", "fullname", "nome", "sobrenome", "dob", "nik", "ktp", "rg",
        "zip", "cep", "postcode",
    )
)  # fmt: skip
_NAMES = re.compile(r"(?:^|&)([^=&]*)")
# The verdict on each parameter name seen (a site's landing URLs use a few): a dict lookup.
_verdicts: dict[str, bool] = {}


def _personal_name(name: str) -> bool:
    verdict = _verdicts.get(name)
    if verdict is None:
        n = unquote(name).lower()
        verdict = n in _PERSONAL_NAMES or any(w in n for w in _PERSONAL_WORDS)
        if len(_verdicts) < 1024:
            _verdicts[name] = verdict
    return verdict


def _personal(pair: str) -> bool:
    name, _, value = pair.partition("=")
    return "@" in value or "%40" in value or _personal_name(name)


def url_without_personal_data(url: str, names_read: bool = False) -> str:
    """``url`` without the query parameters that carry personal data: an e-mail address
    in any parameter, and parameters named for an e-mail, a phone, a name, a birth date, an
    address or a document number (CPF, CNPJ, NIK...), as lead forms that submit by GET put
    them. Everything else stays as it was, in order. Applied to every URL tracking keeps or
    sends: the landing URL in the cookie, the page URL and the referrer.

    ``names_read``: the caller knows every parameter is one tracking reads (a click id, a
    pixel id, a UTM tag; none of them named for personal data), so only values are looked
    at: a landing URL then costs two searches instead of a look at every name.
    """
    base, sep, query = url.partition("?")
    if not sep or (
        query.find("@") < 0
        and query.find("%40") < 0
        and (names_read or not any(map(_personal_name, _NAMES.findall(query))))
    ):
        return url
    kept = [p for p in query.split("&") if not _personal(p)]
    return f"{base}?{'&'.join(kept)}" if kept else base
