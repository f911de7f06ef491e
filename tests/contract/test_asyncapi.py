"""docs/asyncapi.yaml is what the contracts say, and names every event of the product spec."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagegen.asyncapi import render
from schemas.topics import registry

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"

# The product spec's analytics events (the epic's table) and the properties each must carry
# in `data`, plus what analysts need beside them: tier, provider, model and cost where they
# apply (user is the envelope's `user_id`).
SPEC_EVENTS: dict[str, tuple[str, ...]] = {
    "generation_queued": ("character_id", "image_count"),
    "generation_started": ("character_id", "model"),
    "generation_completed": ("character_id", "duration_ms"),
    "generation_failed": ("character_id", "error_type"),
    "image_stored": ("character_id", "size_bytes"),
    "pack_completed": ("character_id", "image_count", "total_duration_ms"),
}
ANALYST_FIELDS: dict[str, tuple[str, ...]] = {
    "generation_queued": ("tier", "provider", "model", "estimated_cost_usd"),
    "generation_started": ("tier", "provider", "queue_wait_ms"),
    "generation_completed": ("tier", "provider", "model", "cost_usd"),
    "generation_failed": ("tier", "provider", "model"),
    "image_stored": ("tier", "provider", "model", "cost_usd"),
    "pack_completed": ("tier", "cost_usd"),
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOC.read_text(encoding="utf-8"))
    return loaded


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        path = node["$ref"].removeprefix("#/").split("/")
        node = doc
        for part in path:
            node = node[part]
    return node


def test_the_committed_document_is_what_the_code_generates() -> None:
    # Regenerated with the schema snapshots: `UPDATE_SNAPSHOTS=1 pytest tests/contract`.
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        DOC.write_text(render(), encoding="utf-8")
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/asyncapi.yaml drifted from the schemas: run"
        " `.venv/bin/imagegen asyncapi --output docs/asyncapi.yaml` (or"
        " `UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/contract`) and commit it"
    )


def test_every_topic_of_the_registry_is_a_channel(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"]: c for c in doc["channels"].values()}
    for spec in registry():
        channel = addresses[spec.name]
        assert channel["bindings"]["kafka"]["partitions"] == spec.partitions
        assert channel["messages"], spec.name


def test_every_spec_event_is_a_message_of_the_events_channel_with_its_fields(
    doc: dict[str, Any],
) -> None:
    events = doc["channels"]["events"]["messages"]
    for name, fields in SPEC_EVENTS.items():
        message = resolve(doc, events[name])
        assert message["name"] == name
        envelope = resolve(doc, message["payload"])
        assert envelope["properties"]["type"]["const"] == name
        for envelope_field in ("id", "source", "time", "job_id", "user_id"):
            assert envelope_field in envelope["properties"], (name, envelope_field)
        data = resolve(doc, envelope["properties"]["data"])
        for field in (*fields, *ANALYST_FIELDS[name]):
            assert field in data["properties"], (name, field)
        for field in fields:
            # A field added after an event's first version has a default, so older events
            # still parse; its description says when it is absent.
            optional_but_documented = "description" in data["properties"][field]
            assert field in data.get("required", []) or optional_but_documented, (name, field)


def test_operations_reference_existing_channel_messages(doc: dict[str, Any]) -> None:
    for operation in doc["operations"].values():
        channel = resolve(doc, operation["channel"])
        messages = [resolve(doc, m) for m in channel["messages"].values()]
        for ref in operation["messages"]:
            assert ref["$ref"].startswith(operation["channel"]["$ref"] + "/messages/")
            assert resolve(doc, ref) in messages


def test_the_cli_prints_the_same_document(tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.yaml"
    subprocess.run(
        [sys.executable, "-m", "imagegen.cli", "asyncapi", "--output", str(out)], check=True
    )
    assert out.read_text(encoding="utf-8") == render()
