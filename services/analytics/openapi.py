"""The analytics API's OpenAPI document (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

_WINDOW = {
    "name": "window",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "enum": ["minute", "hour"]},
    "description": "minute: tumbling one-minute windows; hour: one-hour windows"
    " hopping every 15 minutes. Any other name is a 404 naming it.",
}
_LAST = {
    "name": "last",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 60},
    "description": "How many of the latest windows (that hold any event) to return.",
}
_PROBLEM = {
    "description": "Unknown window or metric (the detail names it), or a bad `last`",
    "content": {"application/problem+json": {"schema": {"type": "object"}}},
}


def _get(summary: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": params or [],
            "responses": {"200": {"description": "OK"}, "400": _PROBLEM, "404": _PROBLEM},
        }
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "imagegen analytics",
        "version": "1",
        "description": "KPIs of the events topic by event time: per-minute (tumbling) and"
        " per-hour (hopping) windows, all-time totals, and the product's promises. A"
        " redelivered event (same id) counts once; a malformed or unknown event is counted"
        " under `rejected` and skipped.",
    },
    "paths": {
        "/api/v1/windows": _get("The window kinds and the metric names"),
        "/api/v1/windows/{window}": _get(
            "Every KPI of each of the latest windows", [_WINDOW, _LAST]
        ),
        "/api/v1/windows/{window}/counts": _get(
            "The raw counts of every retained window (what the KPIs are computed from;"
            " integer counts, milliseconds and micro-USD)",
            [_WINDOW],
        ),
        "/api/v1/windows/{window}/metrics/{metric}": _get(
            "One KPI as a time series",
            [
                _WINDOW,
                _LAST,
                {
                    "name": "metric",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "A name from /api/v1/windows `metrics`.",
                },
            ],
        ),
        "/api/v1/totals": _get("Every KPI since the start of the topic, and jobs running now"),
        "/api/v1/promises": _get("The product's promises, each pass, fail or no data"),
        "/metrics": _get("Prometheus text exposition (imagegen_analytics_*)"),
        "/healthz": _get("Alive"),
        "/readyz": _get(
            "Journal read back, views rebuilt and partitions assigned (503 until then);"
            " `journal_messages` (one per partition per batch), `journal_records` (records"
            " counted), and `skipped_journalled`: records delivered again after a restart"
            " that the journal had already counted"
        ),
    },
}
