"""The client's IP address, trusting forwarding headers only from configured proxies.

Rules (the shape of uvicorn's ``middleware/proxy_headers.py``, hardened):

- By default the client is the direct peer (ASGI ``scope["client"]``, WSGI ``REMOTE_ADDR``).
- ``X-Forwarded-For`` and ``Forwarded`` (RFC 7239) are read **only** when the direct peer is in
  ``Settings.trusted_proxies``; otherwise anyone could claim any address.
- The client is the *rightmost* address that is not a trusted proxy: every trusted hop appends
  the address it saw, so entries left of the first untrusted one may be forged by the client.
- Garbage entries (not an address, not an identifier) are skipped; ports, quotes and IPv6
  brackets are removed; repeated headers are joined in order. An identifier a proxy wrote
  in place of an address (``unknown``, an obfuscated ``_hidden``) ends the walk with no
  address: what lies left of it came from beyond that proxy, possibly from the client.
- Only one header is read, the one the proxies write (``Settings.proxy_header``,
  ``X-Forwarded-For`` by default): a proxy passes the other one through as the client sent
  it, so reading whichever is present would let the client choose.
- When every listed hop is trusted, the leftmost one is the client.
- A missing peer (a Unix socket, only reachable from the same host) counts as trusted when
  any proxy is configured.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["parse_forwarded", "parse_ip", "parse_x_forwarded_for", "resolve_client_ip"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_MAX_HEADER = 8192


def parse_ip(value: str) -> _IP | None:
    """An address from one hop entry (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``"::1"``)."""
    v = value.strip().strip('"').strip()
    if not v or len(v) > 64:
        return None
    if v.startswith("["):
        end = v.find("]")
        if end < 0:
            return None
        v = v[1:end]
    elif v.count(":") == 1:
        v = v.partition(":")[0]
    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_x_forwarded_for(value: str) -> list[str]:
    """The raw hop entries of an ``X-Forwarded-For`` value, leftmost first."""
    # Keep the *end*: trusted proxies append on the right, a client can only pad on the left.
    return value[-_MAX_HEADER:].split(",")


def _split_unquoted(value: str, sep: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            buf.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
            buf.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def parse_forwarded(value: str) -> list[str]:
    """The raw ``for=`` values of an RFC 7239 ``Forwarded`` value, leftmost first.

    An element without ``for=`` yields an empty entry, which callers skip like garbage.
    """
    out: list[str] = []
    for element in _split_unquoted(value[-_MAX_HEADER:], ","):
        found = ""
        for pair in _split_unquoted(element, ";"):
            key, sep, val = pair.partition("=")
            if sep and key.strip().lower() == "for":
                found = val.strip()
                break
        out.append(found)
    return out


def _trusted(ip: _IP, networks: Sequence[_Network]) -> bool:
    return any(ip in net for net in networks)


def _identifier(entry: str) -> bool:
    """Whether a hop entry is RFC 7239's ``unknown`` or an obfuscated ``_name``."""
    v = entry.strip().strip('"').strip()
    return v.lower() == "unknown" or (
        v[:1] == "_" and len(v) > 1 and all(c.isalnum() or c in "._-" for c in v[1:])
    )


def resolve_client_ip(
    peer: str | None,
    *,
    x_forwarded_for: str | None,
    forwarded: str | None,
    trusted: Sequence[_Network],
    header: str = "x-forwarded-for",
) -> str | None:
    """The client's address as a string, following the rules in the module docstring;
    ``header`` is the one the trusted proxies write (``x-forwarded-for`` or ``forwarded``)."""
    if not trusted:
        return peer
    if peer is not None:
        peer_ip = parse_ip(peer)
        if peer_ip is None or not _trusted(peer_ip, trusted):
            return peer
    if header == "forwarded":
        if not forwarded:
            return peer
        entries = parse_forwarded(forwarded)
    elif x_forwarded_for:
        entries = parse_x_forwarded_for(x_forwarded_for)
    else:
        return peer
    leftmost: _IP | None = None
    for raw in reversed(entries):
        ip = parse_ip(raw)
        if ip is None:
            if _identifier(raw):
                return None
            continue
        if not _trusted(ip, trusted):
            return str(ip)
        leftmost = ip
    if leftmost is not None:
        return str(leftmost)
    return peer
