"""Every documented answer of every platform, and what the adapter makes of it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tracking_mw.platforms import Adapter, build_adapters
from tracking_mw.testing import FakePlatforms

from ._helpers import fake_settings


@pytest.fixture(scope="module")
def adapters() -> dict[str, Adapter]:
    return build_adapters(fake_settings(FakePlatforms()))


def j(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


# (platform, status, headers, body, item_count, kind, retry_after, reason fragment)
CASES: list[tuple[str, int, dict[str, str], bytes, int, str, float | None, str]] = [
    # Bigo: code 1 ok; -1 server error retry; -4 and documented messages permanent.
    (
        "bigo",
        200,
        {},
        j({"code": 1, "msg": "success", "logid": 739903845363969760, "timestamp": 1691149150}),
        1,
        "ok",
        None,
        "",
    ),
    ("bigo", 200, {}, j({"code": -1, "msg": "internal error"}), 1, "retry", None, "-1"),
    ("bigo", 200, {}, j({"code": -4, "msg": "parameter error"}), 1, "permanent", None, "-4"),
    (
        "bigo",
        200,
        {},
        j({"code": -4, "msg": "need pixel_id"}),
        1,
        "permanent",
        None,
        "need pixel_id",
    ),
    ("bigo", 200, {}, j({"code": -4, "msg": "invalid bbg"}), 1, "permanent", None, "invalid bbg"),
    (
        "bigo",
        200,
        {},
        j({"code": -1, "msg": "invalid bgg id"}),
        1,
        "permanent",
        None,
        "invalid bgg",
    ),
    (
        "bigo",
        200,
        {},
        j({"code": -4, "msg": "notfound pixel"}),
        1,
        "permanent",
        None,
        "notfound pixel",
    ),
    (
        "bigo",
        200,
        {},
        j({"code": -4, "msg": "invalid event_id"}),
        1,
        "permanent",
        None,
        "invalid event_id",
    ),
    ("bigo", 200, {}, j({"code": 0, "msg": "?"}), 1, "permanent", None, "bigo 0"),
    ("bigo", 200, {}, b"<html>gateway</html>", 1, "retry", None, "without a code"),
    ("bigo", 502, {}, b"", 1, "retry", None, "HTTP 502"),
    ("bigo", 404, {}, b"", 1, "permanent", None, "HTTP 404"),
    # Kwai: result 1 ok; every other result code permanent (known or not); HTTP 5xx and an
    # unparseable body retry.
    ("kwai", 200, {}, j({"result": 1, "error_msg": ""}), 1, "ok", None, ""),
    (
        "kwai",
        200,
        {},
        j({"result": 10001, "error_msg": "缺少event_name参数"}),
        1,
        "permanent",
        None,
        "10001",
    ),
    (
        "kwai",
        200,
        {},
        j({"result": 10002, "error_msg": "参数value类型错误"}),
        1,
        "permanent",
        None,
        "10002",
    ),
    (
        "kwai",
        200,
        {},
        j({"result": 10005, "error_msg": "callback字段不合法"}),
        1,
        "permanent",
        None,
        "clickid",
    ),
    (
        "kwai",
        200,
        {},
        j({"result": 10006, "error_msg": "token不合法"}),
        1,
        "permanent",
        None,
        "token",
    ),
    (
        "kwai",
        200,
        {},
        j({"result": 10007, "error_msg": "eventName不合法"}),
        1,
        "permanent",
        None,
        "event name",
    ),
    ("kwai", 200, {}, j({"result": 10099, "error_msg": "x"}), 1, "permanent", None, "10099"),
    ("kwai", 200, {}, j({"result": 500, "error_msg": "busy"}), 1, "permanent", None, "500"),
    ("kwai", 200, {}, j({"result": 0, "error_msg": ""}), 1, "permanent", None, "kwai 0"),
    ("kwai", 200, {}, j({"result": -1, "error_msg": "x"}), 1, "permanent", None, "kwai -1"),
    ("kwai", 200, {}, b"not json", 1, "retry", None, "without a result"),
    ("kwai", 503, {"Retry-After": "7"}, b"", 1, "retry", 7.0, "HTTP 503"),
    ("kwai", 400, {}, b"", 1, "permanent", None, "HTTP 400"),
    # ROIBest: code 0 ok; anything else permanent with msg.
    ("roibest", 200, {}, j({"code": 0, "msg": "success", "data": {}}), 1, "ok", None, ""),
    (
        "roibest",
        200,
        {},
        j({"code": 1001, "msg": "link not found"}),
        1,
        "permanent",
        None,
        "link not found",
    ),
    ("roibest", 200, {}, j({"code": -1, "msg": "x"}), 1, "permanent", None, "-1"),
    ("roibest", 200, {}, b"", 1, "retry", None, "without a code"),
    ("roibest", 500, {}, b"", 1, "retry", None, "HTTP 500"),
    ("roibest", 403, {}, b"", 1, "permanent", None, "HTTP 403"),
    # Rokt: 202 ok; 400/401/403 permanent; 429 honours Retry-After; 5xx retry.
    ("rokt", 202, {}, b"", 1, "ok", None, ""),
    ("rokt", 202, {}, b"", 100, "ok", None, ""),
    ("rokt", 400, {}, j({"errors": [{"message": "bad"}]}), 1, "permanent", None, "bad request"),
    ("rokt", 401, {}, b"", 1, "permanent", None, "missing"),
    ("rokt", 403, {}, b"", 1, "permanent", None, "invalid"),
    ("rokt", 429, {"Retry-After": "30"}, b"", 1, "retry", 30.0, "429"),
    ("rokt", 429, {}, b"", 1, "retry", None, "429"),
    ("rokt", 503, {}, b"", 1, "retry", None, "503"),
    ("rokt", 500, {}, b"", 1, "retry", None, "500"),
    # Meta: events_received == len(data); error codes.
    (
        "meta",
        200,
        {},
        j({"events_received": 3, "messages": [], "fbtrace_id": "A"}),
        3,
        "ok",
        None,
        "",
    ),
    (
        "meta",
        200,
        {},
        j({"events_received": 2, "messages": [], "fbtrace_id": "A"}),
        3,
        "permanent",
        None,
        "2 of 3",
    ),
    ("meta", 200, {}, b"oops", 1, "retry", None, "JSON"),
    (
        "meta",
        400,
        {},
        j(
            {
                "error": {
                    "message": "Invalid parameter",
                    "type": "OAuthException",
                    "code": 100,
                    "fbtrace_id": "A",
                }
            }
        ),
        1,
        "permanent",
        None,
        "100",
    ),
    (
        "meta",
        400,
        {},
        j(
            {
                "error": {
                    "message": "Invalid OAuth access token",
                    "type": "OAuthException",
                    "code": 190,
                    "fbtrace_id": "A",
                }
            }
        ),
        1,
        "permanent",
        None,
        "190",
    ),
    (
        "meta",
        403,
        {},
        j(
            {
                "error": {
                    "message": "Permissions error",
                    "type": "OAuthException",
                    "code": 200,
                    "fbtrace_id": "A",
                }
            }
        ),
        1,
        "permanent",
        None,
        "200",
    ),
    (
        "meta",
        400,
        {},
        j(
            {
                "error": {
                    "message": "Application request limit reached",
                    "code": 4,
                    "fbtrace_id": "A",
                }
            }
        ),
        1,
        "retry",
        None,
        "4",
    ),
    (
        "meta",
        400,
        {},
        j({"error": {"message": "User request limit reached", "code": 17, "fbtrace_id": "A"}}),
        1,
        "retry",
        None,
        "17",
    ),
    (
        "meta",
        400,
        {"Retry-After": "60"},
        j(
            {
                "error": {
                    "message": "Calls to this api have exceeded the rate limit",
                    "code": 613,
                    "fbtrace_id": "A",
                }
            }
        ),
        1,
        "retry",
        60.0,
        "613",
    ),
    (
        "meta",
        500,
        {},
        j(
            {
                "error": {
                    "message": "An unexpected error has occurred",
                    "code": 2,
                    "is_transient": True,
                }
            }
        ),
        1,
        "retry",
        None,
        "2",
    ),
    ("meta", 503, {}, b"", 1, "retry", None, "HTTP 503"),
    ("meta", 500, {}, j({"error": {"message": "weird", "code": 100}}), 1, "retry", None, "100"),
    # TikTok: code 0 ok; 40100 retry; others permanent.
    (
        "tiktok",
        200,
        {},
        j({"code": 0, "message": "OK", "request_id": "r", "data": {}}),
        1,
        "ok",
        None,
        "",
    ),
    (
        "tiktok",
        200,
        {},
        j({"code": 40100, "message": "Too many requests"}),
        1,
        "retry",
        None,
        "40100",
    ),
    ("tiktok", 200, {}, j({"code": 50000, "message": "System error"}), 1, "retry", None, "50000"),
    (
        "tiktok",
        200,
        {},
        j({"code": 40105, "message": "token revoked"}),
        1,
        "permanent",
        None,
        "40105",
    ),
    (
        "tiktok",
        200,
        {},
        j({"code": 40002, "message": "Invalid params"}),
        1,
        "permanent",
        None,
        "40002",
    ),
    ("tiktok", 200, {}, b"", 1, "retry", None, "without a code"),
    ("tiktok", 429, {"retry-after": "3"}, b"", 1, "retry", 3.0, "429"),
    ("tiktok", 401, {}, b"", 1, "permanent", None, "HTTP 401"),
]


@pytest.mark.parametrize(
    ("platform", "status", "headers", "body", "count", "kind", "retry_after", "reason"),
    CASES,
    ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)],
)
def test_classification_table(
    adapters: dict[str, Adapter],
    platform: str,
    status: int,
    headers: dict[str, str],
    body: bytes,
    count: int,
    kind: str,
    retry_after: float | None,
    reason: str,
) -> None:
    outcome = adapters[platform].classify(status, headers, body, count)
    assert outcome.kind == kind, outcome
    assert outcome.retry_after == retry_after
    assert reason in outcome.reason


@pytest.mark.parametrize("platform", ["meta", "kwai", "bigo", "rokt", "roibest", "tiktok"])
@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_http_level_retry_everywhere(
    adapters: dict[str, Adapter], platform: str, status: int
) -> None:
    assert adapters[platform].classify(status, {}, b"", 1).kind == "retry"


@pytest.mark.parametrize("platform", ["meta", "kwai", "bigo", "rokt", "roibest", "tiktok"])
def test_reasons_are_bounded(adapters: dict[str, Adapter], platform: str) -> None:
    huge = j(
        {
            "code": 5,
            "result": 10002,
            "msg": "m" * 10000,
            "error_msg": "m" * 10000,
            "message": "m" * 10000,
            "error": {"code": 100, "message": "m" * 10000},
        }
    )
    outcome = adapters[platform].classify(400 if platform in ("meta", "rokt") else 200, {}, huge, 1)
    assert outcome.kind == "permanent"
    assert len(outcome.reason) < 500
