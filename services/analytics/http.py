"""The HTTP side: JSON API, Prometheus /metrics, health, and the page (aiohttp, no CDN)."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from imagegen.telemetry import METRICS_CONTENT_TYPE, metrics_exposition
from services.analytics.openapi import OPENAPI
from services.analytics.queries import (
    METRICS,
    KpiReader,
    UnknownName,
    concurrent_jobs,
    kpis,
    promises,
    series,
    window_counts,
)
from services.analytics.windows import WINDOWS

Ready = Callable[[], tuple[bool, str]]
_STATIC = ("index.html", "page.js", "page.css")


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: None instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(_clean(body), status=status, dumps=json.dumps)


def _problem(status: int, detail: str) -> web.Response:
    return web.json_response(
        {
            "status": status,
            "title": "Not Found" if status == 404 else "Bad Request",
            "detail": detail,
        },
        status=status,
        content_type="application/problem+json",
    )


def _last(request: web.Request, default: int = 60) -> int:
    raw = request.query.get("last")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise web.HTTPBadRequest(
            text=json.dumps(
                {
                    "status": 400,
                    "title": "Bad Request",
                    "detail": f"last must be a whole number 1..10000, not {raw!r}",
                }
            ),
            content_type="application/problem+json",
        )
    return int(raw)


def build_web_app(
    reader: KpiReader,
    ready: Ready,
    budget_usd: float,
    status: Callable[[], dict[str, int]] = dict,
) -> web.Application:
    app = web.Application(middlewares=[_unknown_names])
    registry = CollectorRegistry(auto_describe=False)
    from services.analytics.prom import KpiCollector

    registry.register(KpiCollector(reader, budget_usd))

    async def healthz(_: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok, why = ready()
        body = {"status": "ready" if ok else "not ready", "detail": why, **status()}
        return _json(body, 200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        body = metrics_exposition() + generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def windows(_: web.Request) -> web.Response:
        return _json(
            {
                "windows": [
                    {
                        "name": s.name,
                        "size_s": s.size_s,
                        "step_s": s.step_s,
                        "description": s.description,
                    }
                    for s in WINDOWS.values()
                ],
                "metrics": list(METRICS),
            }
        )

    async def window(request: web.Request) -> web.Response:
        name = request.match_info["window"]
        last = _last(request)
        counts = window_counts(reader, name)
        size = WINDOWS[name].size_s
        rows = [
            {"start": start, "end": start + size, "kpis": kpis(values)}
            for start, values in list(counts.items())[-last:]
        ]
        return _json({"window": name, "windows": rows})

    async def counts(request: web.Request) -> web.Response:
        name = request.match_info["window"]
        got = window_counts(reader, name)
        return _json(
            {
                "window": name,
                "windows": [{"start": start, "counts": values} for start, values in got.items()],
            }
        )

    async def metric(request: web.Request) -> web.Response:
        name, which = request.match_info["window"], request.match_info["metric"]
        rows = series(reader, name, which, _last(request))
        return _json({"window": name, "metric": which, "series": rows})

    async def totals(_: web.Request) -> web.Response:
        import time

        body = kpis(dict(reader.total_items()))
        body["concurrent_jobs"] = concurrent_jobs(reader.job_items(), time.time())
        return _json(body)

    async def promise_view(_: web.Request) -> web.Response:
        return _json({"promises": promises(reader, budget_usd), "budget_usd": budget_usd})

    async def openapi(_: web.Request) -> web.Response:
        return _json(OPENAPI)

    def static(name: str, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(_: web.Request) -> web.Response:
            text = resources.files("services.analytics").joinpath("static", name).read_text()
            return web.Response(
                text=text, content_type=content_type, headers={"Cache-Control": "no-cache"}
            )

        return handler

    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            web.get("/openapi.json", openapi),
            web.get("/api/v1/windows", windows),
            web.get("/api/v1/windows/{window}", window),
            web.get("/api/v1/windows/{window}/counts", counts),
            web.get("/api/v1/windows/{window}/metrics/{metric}", metric),
            web.get("/api/v1/totals", totals),
            web.get("/api/v1/promises", promise_view),
            web.get("/", static("index.html", "text/html")),
            web.get("/page.js", static("page.js", "application/javascript")),
            web.get("/page.css", static("page.css", "text/css")),
        ]
    )
    return app


@web.middleware
async def _unknown_names(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except UnknownName as exc:
        return _problem(404, str(exc))
