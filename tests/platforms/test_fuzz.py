"""Whatever the web sends, adapters either build a JSON-ready item or skip; never crash."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracking_mw._errors import InvalidEvent
from tracking_mw.attribution import Attribution, ClientContext, Touch
from tracking_mw.events import Event
from tracking_mw.platforms import Outcome, Skip, build_adapters, validate_event
from tracking_mw.testing import FakePlatforms

from ._helpers import fake_settings

FAKE = FakePlatforms()
ADAPTERS = build_adapters(fake_settings(FAKE, phone_region="ID"))

text = st.text(max_size=30)
opt_text = st.none() | text
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | text
properties = st.dictionaries(
    text,
    st.recursive(
        json_scalars,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3),
        max_leaves=6,
    ),
    max_size=4,
)
user = st.fixed_dictionaries(
    {},
    optional={
        "email": st.emails() | text,
        "phone": st.from_regex(r"\+?[0-9 ()\-]{6,16}", fullmatch=True) | text,
    }
    | {
        k: text
        for k in (
            "first_name",
            "last_name",
            "city",
            "state",
            "zip",
            "country",
            "external_id",
            "date_of_birth",
            "gender",
        )
    },
)


@st.composite
def attributions(draw: st.DrawFn) -> Attribution:
    att = Attribution(visitor_id="v")
    for platform in draw(
        st.sets(st.sampled_from(["meta", "kwai", "bigo", "rokt", "roibest", "tiktok"]))
    ):
        extra = draw(
            st.dictionaries(
                st.sampled_from(["fbc", "fbp", "cookie_id", "ttp", "channel"]), text, max_size=3
            )
        )
        att = att.with_touch(
            Touch(
                platform=platform,
                click_id=draw(opt_text),
                pixel_id=draw(opt_text),
                last_seen=draw(st.integers(0, 2**31)),
                landing_url=draw(opt_text),
                extra=extra,
            )
        )
    return att.with_client(
        ClientContext(
            ip=draw(opt_text),
            user_agent=draw(opt_text),
            url=draw(opt_text),
            referrer=draw(opt_text),
        )
    )


def post(req: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=FAKE.app)) as client:
            return await client.request(
                req.method, req.url, headers=dict(req.headers), content=req.body
            )

    return asyncio.run(go())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(
        ["Purchase", "Lead", "PageView", "FirstDeposit", "EVENT_LOAN_CREDIT", "custom"]
    )
    | text,
    value=st.none() | st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False),
    currency=st.none() | st.sampled_from(["BRL", "USD", "IDR", "EUR"]),
    user=user,
    props=properties,
    att=attributions(),
)
def test_prepare_build_classify_never_crash(
    name: str,
    value: Any,
    currency: str | None,
    user: dict[str, str],
    props: dict[str, Any],
    att: Attribution,
) -> None:
    try:
        event = Event(name=name, value=value, currency=currency, user=user, properties=props)
        validate_event(event)
    except InvalidEvent:
        return
    for adapter in ADAPTERS.values():
        try:
            item = adapter.prepare(event, att)
        except Skip as skip:
            assert skip.reason
            continue
        assert json.loads(json.dumps(item, allow_nan=False)) == item
        req = adapter.build([item])
        resp = post(req)
        assert resp.status_code < 500
        outcome = adapter.classify(resp.status_code, dict(resp.headers), resp.content, 1)
        assert isinstance(outcome, Outcome)


@settings(max_examples=80, deadline=None)
@given(
    path=st.sampled_from(
        [
            "/meta/v25.0/1234567890123456/events",
            "/kwai/log/common/api",
            "/bigo/bigoad/trackingevent",
            "/rokt/v2/events",
            "/rokt/v2/bulkevents",
            "/roibest/report/fb/event",
            "/tiktok/open_api/v1.3/event/track/",
        ]
    ),
    body=st.binary(max_size=200)
    | st.recursive(
        json_scalars,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=4),
        max_leaves=8,
    ).map(lambda v: json.dumps(v).encode()),
    ctype=st.sampled_from(
        ["application/json", "application/x-www-form-urlencoded", "text/plain", ""]
    ),
)
def test_fake_answers_garbage_in_the_platform_shape(path: str, body: bytes, ctype: str) -> None:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=FAKE.app), base_url="http://f"
        ) as c:
            headers = {"Content-Type": ctype} if ctype else {}
            return await c.post(path, content=body, headers=headers)

    resp = asyncio.run(go())
    assert resp.status_code < 500
    FAKE.reset()
