"""Compact JSON for what the library stores and sends: orjson when installed, else stdlib.

Why orjson: ``track()`` encodes every platform's item in the request path, and the stdlib
encoder costs about 10 µs for one Meta item on a small server (orjson: under 1 µs). That
was the largest share of ``track()`` after the commit itself. The output is the same JSON
either way (compact separators, UTF-8 kept as is); only the spelling of floats with an
exponent differs (``1e+16`` vs ``1e16``), which every JSON parser reads alike.

A value orjson refuses (an integer beyond 64 bits, a dict key that is not a string, a
lone surrogate) goes through the stdlib encoder, which accepts or rejects it exactly as
before. (orjson's own option for non-string keys slows down every dict, and the library's
dicts have string keys.)

Lone surrogates become U+FFFD. Python text can hold them (``bytes.decode(...,
"surrogateescape")`` makes one per byte that is not UTF-8, as ``os.fsdecode`` or a
latin-1 header read as UTF-8 do), but UTF-8 cannot encode them: stored as they are, the
outbox's write would fail and the whole event be lost, for a character no platform could
read anyway. A valid pair of surrogates becomes the character it stands for.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["clean_text", "dumps", "dumps_bytes", "loads"]

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_decode = json.JSONDecoder().decode

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; kept for odd platforms
    orjson = None  # type: ignore[assignment]


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD: text UTF-8 can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # UTF-16 with surrogatepass keeps every code unit; decoding joins valid pairs and
        # replaces each lone one.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def _std_dumps(obj: Any) -> str:
    # The stdlib writes a surrogate as it is (ensure_ascii=False), only ever inside a
    # string: cleaning the text is cleaning the value.
    return clean_text(_encode(obj))


def _std_dumps_bytes(obj: Any) -> bytes:
    return _std_dumps(obj).encode("utf-8")


def _std_loads(text: str | bytes) -> Any:
    return _decode(text.decode("utf-8") if isinstance(text, bytes) else text)


if orjson is not None:
    _odumps = orjson.dumps
    _oloads = orjson.loads

    def dumps_bytes(obj: Any) -> bytes:
        """Compact JSON as UTF-8 bytes."""
        try:
            return _odumps(obj)
        except TypeError:
            return _std_dumps_bytes(obj)

    def dumps(obj: Any) -> str:
        """Compact JSON text."""
        try:
            return _odumps(obj).decode("utf-8")
        except TypeError:
            return _std_dumps(obj)

    def loads(text: str | bytes) -> Any:
        """Parse JSON text or UTF-8 bytes."""
        try:
            return _oloads(text)
        except orjson.JSONDecodeError:
            # The stdlib parser accepts a few things orjson does not (NaN, lone
            # surrogates): stored texts written before stay readable.
            return _std_loads(text)

else:  # pragma: no cover
    dumps = _std_dumps
    dumps_bytes = _std_dumps_bytes
    loads = _std_loads
