"""An AsyncAPI 3.0 document generated from the contracts: every topic of the registry is a
channel, every message model a message with its pydantic JSON schema, and each event type
of the `events` topic a message of its own (named by its `type`), for analysts.

`imagegen asyncapi` prints it; docs/asyncapi.yaml is the committed copy, which a contract
test keeps equal to what this module generates.
"""

from __future__ import annotations

from typing import Any, get_args

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas.deadletter import DeadLetterHeaders
from schemas.events import Event, JobCancelled
from schemas.images import ProcessedImage, RawImage
from schemas.jobs import GenerateImage
from schemas.requests import Request
from schemas.topics import DEFAULT_NAMESPACE, TopicSpec, registry

_REF = "#/components/schemas/{model}"
HEADERS = {
    "traceparent": "W3C trace context of the request this message belongs to.",
    "imagegen-enqueued-at": "Epoch seconds the message was queued (queue-wait measurement).",
}
_PRODUCERS = {
    "requests": "gateway",
    "jobs": "scheduler",
    "images.raw": "generator",
    "images.processed": "postprocess",
    "events": "scheduler, generator, postprocess, storage",
    "control": "scheduler (a copy of each job_cancelled)",
    "deadletter": "every consumer (messages it could not handle)",
}
_CONSUMERS = {
    "requests": "scheduler, storage (deletes, reviews)",
    "jobs": "generator",
    "images.raw": "postprocess",
    "images.processed": "storage",
    "events": "gateway (SSE, read model), scheduler (outcomes), analytics",
    "control": "generator (stops a cancelled job's images)",
    "deadletter": "operators (`imagegen dlq`)",
}


def _members(union: Any) -> list[type[BaseModel]]:
    """The models of an `Annotated[A | B | ..., Field(discriminator=...)]` union."""
    return list(get_args(get_args(union)[0]))


def _type_of(model: type[BaseModel]) -> str:
    return str(model.model_fields["type"].default)


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def topic_messages() -> dict[str, list[tuple[str, type[BaseModel]]]]:
    """Per topic role: (message name, model). Events and requests are named by their `type`."""
    jobs: list[tuple[str, type[BaseModel]]] = [("generate_image", GenerateImage)]
    messages: dict[str, list[tuple[str, type[BaseModel]]]] = {
        "requests": [(_type_of(m), m) for m in _members(Request)],
        "images.raw": [("raw_image", RawImage)],
        "images.processed": [("processed_image", ProcessedImage)],
        "events": [(_type_of(m), m) for m in _members(Event)],
        "control": [("job_cancelled", JobCancelled)],
    }
    for spec in registry():
        if spec.role.startswith("jobs."):
            messages[spec.role] = jobs
    return messages


def _channel(spec: TopicSpec, names: list[str]) -> dict[str, Any]:
    family = "jobs" if spec.role.startswith("jobs.") else spec.role
    channel: dict[str, Any] = {
        "address": spec.name,
        "title": spec.role,
        "description": (
            f"{spec.description} Produced by: {_PRODUCERS[family]}."
            f" Consumed by: {_CONSUMERS[family]}. Key: {spec.key}."
        ),
        "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
        "bindings": {
            "kafka": {
                "topic": spec.name,
                "partitions": spec.partitions,
                "topicConfiguration": {
                    **_cleanup_policy(spec),
                    "retention.ms": int(spec.configs["retention.ms"]),
                    "max.message.bytes": int(spec.configs["max.message.bytes"]),
                },
                "bindingVersion": "0.5.0",
            }
        },
    }
    return channel


def _cleanup_policy(spec: TopicSpec) -> dict[str, list[str]]:
    policy = spec.configs.get("cleanup.policy")
    return {"cleanup.policy": policy.split(",")} if policy else {}


def _message(name: str, model: type[BaseModel], key: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": model.__name__,
        "contentType": "application/json",
        "payload": {"$ref": _REF.format(model=model.__name__)},
        "headers": {
            "type": "object",
            "properties": {k: {"type": "string", "description": v} for k, v in HEADERS.items()},
        },
        "bindings": {
            "kafka": {"key": {"type": "string", "description": key}, "bindingVersion": "0.5.0"}
        },
    }
    if doc := _doc(model):
        message["summary"] = doc
    return message


def document(namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the system's topics and messages."""
    specs = {s.role: s for s in registry(namespace)}
    per_topic = topic_messages()
    models = {m for pairs in per_topic.values() for _, m in pairs}
    _, definitions = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template=_REF,
    )
    schemas: dict[str, Any] = dict(sorted(definitions.get("$defs", {}).items()))
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for role, spec in specs.items():
        pairs = per_topic.get(role, [])
        channel_id = role.replace(".", "_")
        if role == "deadletter":
            messages["dead_letter"] = _dead_letter(spec.key)
            names = ["dead_letter"]
        else:
            names = [n for n, _ in pairs]
            for name, model in pairs:
                messages[name] = _message(name, model, spec.key)
        channels[channel_id] = _channel(spec, names)
        ref = {"$ref": f"#/channels/{channel_id}"}
        listed = [{"$ref": f"#/channels/{channel_id}/messages/{n}"} for n in names]
        operations[f"send_{channel_id}"] = {"action": "send", "channel": ref, "messages": listed}
        operations[f"receive_{channel_id}"] = {
            "action": "receive",
            "channel": ref,
            "messages": listed,
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "imagegen topics",
            "version": "1",
            "description": (
                "Every Kafka topic of imagegen and the messages on it, generated from the"
                " `schemas` package (`imagegen asyncapi`). Analysts read the `events`"
                " channel: one CloudEvents-style envelope per event, `type` names it, `data`"
                " holds its fields; ids are deterministic, so deduplicate on `id`."
                f" Topic names carry the namespace (here `{namespace}`)."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _dead_letter(key: str) -> dict[str, Any]:
    example = DeadLetterHeaders(
        error_type="",
        error_message="",
        original_topic="",
        original_partition=0,
        original_offset=0,
        failed_by="",
        failed_at="",
        attempts=1,
    )
    return {
        "name": "dead_letter",
        "title": "DeadLetter",
        "summary": "The original message, unchanged, with why it failed in its headers.",
        "contentType": "application/octet-stream",
        "payload": {"description": "The original message's bytes."},
        "headers": {
            "type": "object",
            "properties": {name: {"type": "string"} for name in example.to_headers()},
        },
        "bindings": {
            "kafka": {"key": {"type": "string", "description": key}, "bindingVersion": "0.5.0"}
        },
    }


def render(namespace: str = DEFAULT_NAMESPACE) -> str:
    """The document as YAML (what docs/asyncapi.yaml holds)."""
    header = "# Generated by `imagegen asyncapi` from the schemas package: do not edit by hand.\n"
    body: str = yaml.safe_dump(document(namespace), sort_keys=False, allow_unicode=True, width=100)
    return header + body
