"""/docs and /redoc work offline: Swagger UI and ReDoc come from the gateway's own static
files (issue 18)."""

from __future__ import annotations

import re

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
