"""`/docs` (Swagger UI) and `/redoc` (ReDoc) from the gateway's own static files, so both
work offline.

FastAPI's default pages load their scripts from a CDN (and ReDoc its fonts from Google);
the assets are vendored under static/swagger/ (swagger-ui-dist, Apache-2.0) and
static/redoc/ (redoc, MIT); see each folder's VERSION file.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
_ASSETS = "/static/swagger"
_REDOC_ASSETS = "/static/redoc"


def install_docs(app: FastAPI) -> None:
    """Serve `/docs`, its OAuth2 redirect page and `/redoc` (the app is built with
    docs_url=None and redoc_url=None)."""
    redirect_url = f"{DOCS_URL}/oauth2-redirect"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        page = _Page(app, request)
        return get_swagger_ui_html(
            openapi_url=page.openapi_url,
            title=f"{app.title} - API docs",
            oauth2_redirect_url=page.url(redirect_url),
            swagger_js_url=page.url(f"{_ASSETS}/swagger-ui-bundle.js"),
            swagger_css_url=page.url(f"{_ASSETS}/swagger-ui.css"),
            swagger_favicon_url=page.favicon_url,
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        page = _Page(app, request)
        return get_redoc_html(
            openapi_url=page.openapi_url,
            title=f"{app.title} - API reference",
            redoc_js_url=page.url(f"{_REDOC_ASSETS}/redoc.standalone.js"),
            redoc_favicon_url=page.favicon_url,
            with_google_fonts=False,
        )


class _Page:
    """What both pages link to, under the path the app is served at (a proxy's prefix)."""

    def __init__(self, app: FastAPI, request: Request) -> None:
        self._root = str(request.scope.get("root_path", "")).rstrip("/")
        self.openapi_url = f"{self._root}{app.openapi_url}"
        self.favicon_url = self.url(f"{_ASSETS}/favicon-32x32.png")

    def url(self, path: str) -> str:
        return f"{self._root}{path}"
