"""/docs and /redoc work offline: Swagger UI and ReDoc come from the gateway's own static
files (issue 18)."""

from __future__ import annotations

import re

import httpx

from tests.unit.gateway.conftest import Gateway


async def test_docs_load_swagger_ui_from_the_gateway_itself(gateway: Gateway) -> None:
    page = await gateway.client.get("/docs")
    assert page.status_code == 200
    assert "/openapi.json" in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets, page.text
    assert all(url.startswith("/static/swagger/") for url in assets), assets
    for url in assets:
        served = await gateway.client.get(url)
        assert served.status_code == 200, url
        assert len(served.content) > 500, url
    redirect = await gateway.client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200


async def test_redoc_loads_from_the_gateway_itself(gateway: Gateway) -> None:
    page = await gateway.client.get("/redoc")
    assert page.status_code == 200
    assert "/openapi.json" in page.text
    assert "fonts.googleapis" not in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/redoc/redoc.standalone.js" in assets, assets
    assert all(url.startswith("/static/") for url in assets), assets
    for url in assets:
        served = await gateway.client.get(url)
        assert served.status_code == 200, url
        assert len(served.content) > 500, url


async def test_both_pages_link_under_the_proxy_prefix(gateway: Gateway) -> None:
    """Behind a proxy that serves the gateway under a prefix (ASGI root_path), every link
    of both pages carries it."""
    transport = httpx.ASGITransport(app=gateway.app, root_path="/imagegen")
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        for path in ("/imagegen/docs", "/imagegen/redoc"):
            page = await client.get(path)
            assert page.status_code == 200, path
            assert "/imagegen/openapi.json" in page.text, path
            assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
            assert assets and all(url.startswith("/imagegen/static/") for url in assets), assets
            for url in assets:
                served = await client.get(url)
                assert served.status_code == 200, url
        docs = (await client.get("/imagegen/docs")).text
        assert "/imagegen/docs/oauth2-redirect" in docs
