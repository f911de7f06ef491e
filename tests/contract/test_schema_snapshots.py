"""Every contract's JSON schema is snapshotted: a change shows up here and must be additive.

Regenerate after an intended change with `UPDATE_SNAPSHOTS=1 pytest tests/contract`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from schemas.deadletter import DeadLetterHeaders
from schemas.events import EVENT_ADAPTER
from schemas.images import ProcessedImage, RawImage
from schemas.jobs import GenerateImage
from schemas.requests import REQUEST_ADAPTER
from schemas.topics import registry

SNAPSHOTS = Path(__file__).parent / "snapshots"

CONTRACTS: dict[str, TypeAdapter[Any]] = {
    "requests": REQUEST_ADAPTER,
    "jobs": TypeAdapter(GenerateImage),
    "images_raw": TypeAdapter(RawImage),
    "images_processed": TypeAdapter(ProcessedImage),
    "events": EVENT_ADAPTER,
    "deadletter_headers": TypeAdapter(DeadLetterHeaders),
}


def _properties(schema: dict[str, object]) -> dict[str, set[str]]:
    """Each definition's property names, to check that changes only add."""
    defs = dict(schema.get("$defs", {}))  # type: ignore[call-overload]
    defs["__root__"] = schema
    return {name: set(d.get("properties", {})) for name, d in defs.items()}


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_schema_matches_snapshot(name: str) -> None:
    schema = CONTRACTS[name].json_schema(mode="serialization")
    path = SNAPSHOTS / f"{name}.json"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1" or not path.exists():
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    snapshot = json.loads(path.read_text())
    old, new = _properties(snapshot), _properties(schema)
    removed = {d: sorted(p - new.get(d, set())) for d, p in old.items() if p - new.get(d, set())}
    assert not removed, f"{name}: fields removed (a breaking change needs a new type): {removed}"
    assert schema == snapshot, f"{name}: schema changed; review and UPDATE_SNAPSHOTS=1"


def test_topic_registry_is_versioned_and_complete() -> None:
    names = [t.name for t in registry()]
    assert len(names) == len(set(names))
    assert all(n.startswith("imagegen.") and n.endswith(".v1") for n in names)
    roles = {t.role for t in registry()}
    assert {"requests", "images.raw", "images.processed", "events", "deadletter"} <= roles
    assert {"jobs.realtime", "jobs.standard", "jobs.economy"} <= roles


def test_every_event_type_named_by_the_architecture_exists() -> None:
    schema = EVENT_ADAPTER.json_schema()
    types = {
        d["properties"]["type"]["const"]
        for d in schema["$defs"].values()
        if "type" in d.get("properties", {}) and "const" in d["properties"]["type"]
    }
    assert {
        "generation_queued",
        "generation_started",
        "generation_progress",
        "generation_completed",
        "generation_failed",
        "image_stored",
        "pack_completed",
        "job_cancelled",
        "budget_alert",
    } <= types
