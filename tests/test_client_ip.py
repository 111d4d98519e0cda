"""client_ip.py: peer by default, forwarding headers only from trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest

from tracking_mw.client_ip import parse_forwarded, parse_ip, resolve_client_ip

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48"))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:8080", "1.2.3.4"),
        ('"1.2.3.4"', "1.2.3.4"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ('"[2001:db8::1]:4711"', "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
        ("[2001:db8::1", None),
        ("1.2.3.4.5", None),
        ("x" * 100, None),
    ],
)
def test_parse_ip(raw: str, expected: str | None) -> None:
    ip = parse_ip(raw)
    assert (str(ip) if ip is not None else None) == expected


def test_parse_forwarded() -> None:
    value = 'for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711", by=x'
    assert parse_forwarded(value) == ["192.0.2.60", '"[2001:db8:cafe::17]:4711"', ""]
    assert parse_forwarded('for="a,b";x=y, for=1.2.3.4') == ['"a,b"', "1.2.3.4"]


XFF, FWD = "x-forwarded-for", "forwarded"


@pytest.mark.parametrize(
    ("peer", "xff", "fwd", "header", "expected"),
    [
        # Peer not trusted: headers are ignored, whatever they say.
        ("203.0.113.5", "1.1.1.1", None, XFF, "203.0.113.5"),
        ("203.0.113.5", None, "for=1.1.1.1", FWD, "203.0.113.5"),
        # Trusted peer: rightmost untrusted hop.
        ("10.0.0.1", "1.1.1.1", None, XFF, "1.1.1.1"),
        ("10.0.0.1", "6.6.6.6, 1.1.1.1, 10.0.0.2", None, XFF, "1.1.1.1"),
        ("10.0.0.1", "6.6.6.6,garbage!, 10.0.0.2", None, XFF, "6.6.6.6"),  # garbage skipped
        ("10.0.0.1", "1.1.1.1:5555", None, XFF, "1.1.1.1"),
        ("10.0.0.1", "[2001:db8::9]:80", None, XFF, "2001:db8::9"),
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", None, XFF, "10.0.0.3"),  # all trusted: leftmost
        ("10.0.0.1", "garbage!, ::zz", None, XFF, "10.0.0.1"),  # nothing usable: peer
        ("10.0.0.1", "", None, XFF, "10.0.0.1"),
        ("10.0.0.1", None, None, XFF, "10.0.0.1"),
        ("10.0.0.1", None, 'for="[2001:db8::5]:4711";proto=https', FWD, "2001:db8::5"),
        ("10.0.0.1", None, "for=1.1.1.1, for=10.0.0.9", FWD, "1.1.1.1"),
        # An identifier a proxy wrote for the client ends the walk: no address, never the
        # entry left of it, which the client may have written.
        ("10.0.0.1", None, "for=1.2.3.4, for=_hidden", FWD, None),
        ("10.0.0.1", None, "for=1.2.3.4, for=unknown", FWD, None),
        ("10.0.0.1", "1.2.3.4, unknown", None, XFF, None),
        # Only the configured header is read: the proxy passes the other one through as the
        # client sent it.
        ("10.0.0.1", "6.6.6.6", "for=3.3.3.3", FWD, "3.3.3.3"),
        ("10.0.0.1", "6.6.6.6", None, FWD, "10.0.0.1"),
        ("10.0.0.1", "2.2.2.2", "for=6.6.6.6", XFF, "2.2.2.2"),
        ("10.0.0.1", None, "for=6.6.6.6", XFF, "10.0.0.1"),
        ("2001:db8:ffff::1", "4.4.4.4", None, XFF, "4.4.4.4"),  # IPv6 proxy network
        (None, "5.5.5.5", None, XFF, "5.5.5.5"),  # a Unix socket peer counts as trusted
        ("not-an-ip", "5.5.5.5", None, XFF, "not-an-ip"),
    ],
)
def test_resolve(
    peer: str | None, xff: str | None, fwd: str | None, header: str, expected: str | None
) -> None:
    got = resolve_client_ip(
        peer, x_forwarded_for=xff, forwarded=fwd, trusted=TRUSTED, header=header
    )
    assert got == expected


def test_no_trusted_proxies_means_peer() -> None:
    assert resolve_client_ip("10.0.0.1", x_forwarded_for="1.1.1.1", forwarded=None, trusted=()) == (
        "10.0.0.1"
    )
    assert resolve_client_ip(None, x_forwarded_for="1.1.1.1", forwarded=None, trusted=()) is None


def test_huge_header_is_bounded() -> None:
    xff = ", ".join(["7.7.7.7"] * 50_000) + ", 8.8.8.8"
    # Only the last 8 KB are read: padding on the left cannot push out what proxies appended.
    got = resolve_client_ip("10.0.0.1", x_forwarded_for=xff, forwarded=None, trusted=TRUSTED)
    assert got == "8.8.8.8"
    fwd = ", ".join(["for=7.7.7.7"] * 50_000) + ", for=8.8.8.8"
    got = resolve_client_ip(
        "10.0.0.1", x_forwarded_for=None, forwarded=fwd, trusted=TRUSTED, header="forwarded"
    )
    assert got == "8.8.8.8"
