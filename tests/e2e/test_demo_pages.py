"""The demo server over plain HTTP: pages, bad input to its webhook, fresh ad clicks."""

from __future__ import annotations

import re

import httpx

from tests.e2e.conftest import DemoServer


def test_pages_answer_and_unknown_ids_are_404(demo: DemoServer) -> None:
    with httpx.Client(base_url=demo.base, timeout=10) as c:
        for path in ("/", "/ads", "/product/mug", "/cart", "/_tracking/", "/static/pixels.js"):
            assert c.get(path).status_code == 200, path
        assert c.get("/product/nope").status_code == 404
        assert c.get("/pay/NOPE").status_code == 404
        assert c.get("/thanks/NOPE").status_code == 404
        assert c.get("/boleto/NOPE").status_code == 404
        # An empty cart has no checkout.
        assert c.get("/checkout", follow_redirects=False).status_code == 303


def test_ads_page_makes_new_clicks_on_every_view(demo: DemoServer) -> None:
    def links() -> list[str]:
        html = httpx.get(f"{demo.base}/ads", timeout=10).text
        return re.findall(r'href="(/\?[^"]+)"', html)

    first, second = links(), links()
    assert len(first) == 6
    for name in ("click_id=", "bbg=", "fbclid=", "rtid=", "link_id=", "ttclid="):
        assert any(name in link for link in first), name
    rtid = re.search(r"rtid=([0-9a-f]+)", " ".join(first))
    assert rtid is not None and len(rtid.group(1)) == 32
    assert not set(first) & set(second)


def test_boleto_webhook_rejects_bad_payloads(demo: DemoServer) -> None:
    url = f"{demo.base}/webhooks/boleto"
    assert httpx.post(url, content=b"not json", timeout=10).status_code == 400
    assert httpx.post(url, json={"nothing": 1}, timeout=10).status_code == 400
    assert httpx.post(url, json={"order_id": "UNKNOWN"}, timeout=10).status_code == 404


def test_fake_platforms_are_mounted_outside_the_middleware(demo: DemoServer) -> None:
    r = httpx.get(f"{demo.base}/_platforms/_fake/received", params={"platform": "kwai"})
    assert r.status_code == 200
    # The dispatcher's own calls to the fakes are not visitors: no tracking cookie there.
    assert "_tmw" not in r.headers.get("set-cookie", "")
