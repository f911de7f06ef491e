"""schemathesis against the gateway's own OpenAPI schema: no input causes a 5xx, and every
answer is one the document promises (documented status code, content type, headers and a
body that validates against the declared schema).

The app runs in a real uvicorn server (its lifespan, real PostgreSQL, the in-memory broker
and blob store) and every generated request carries a valid token, so the fuzzing gets past
authentication into the handlers. Two runs:
- stateless: a few examples per operation (plus schemathesis's coverage cases: missing and
  wrong-typed fields, unexpected methods);
- stateful: sequences that follow the links schemathesis infers from the responses
  (create a character -> get/patch/delete it or generate with it -> follow the job ->
  cancel it, ...), so handlers see ids that exist, not only random ones.
Event streams are left out (a user's stream never ends by design); test_attack_authz.py
covers their refusals. Bounded (few examples, derandomized) to stay well under a minute.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from imagegen.blobstore import InMemoryBlobStore
from imagegen.kafka.memory import InMemoryBroker
from imagegen.stack.postgres import drop_database, ensure_database
from schemas.requests import UserTier
from services.gateway.app import create_app
from services.gateway.auth import issue_token
from services.gateway.settings import GatewaySettings
from tests.integration.gateway.live import serve
from tests.unit.gateway.conftest import gateway_settings

pytestmark = pytest.mark.integration


def _with_job_links(document: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI links schemathesis does not infer: a new character -> a pack of it -> the
    job's status and its cancellation (so sequences reach jobs that exist)."""
    paths = document["paths"]

    def link(source: tuple[str, str, str], name: str, target: tuple[str, str], **how: Any) -> None:
        path, method, code = source
        ref = "#/paths/" + target[0].replace("/", "~1") + "/" + target[1]
        links = paths[path][method]["responses"][code].setdefault("links", {})
        links[name] = {"operationRef": ref, **how}

    link(
        ("/api/v1/characters", "post", "201"),
        "GeneratePack",
        ("/api/generate", "post"),
        requestBody={"character_id": "$response.body#/id", "image_count": 2},
    )
    job = {"job_id": "$response.body#/job_id"}
    for name, target in {
        "GetPack": ("/api/generate/{job_id}", "get"),
        "GetJob": ("/api/v1/jobs/{job_id}", "get"),
        "CancelPack": ("/api/generate/{job_id}/cancel", "post"),
        "CancelJob": ("/api/v1/jobs/{job_id}/cancel", "post"),
    }.items():
        link(("/api/generate", "post", "202"), name, target, parameters=job)
    return document


# The schema does not depend on runtime state: build it from an app that is never started.
schema = schemathesis.openapi.from_dict(
    _with_job_links(create_app(GatewaySettings(env="test")).openapi())
).exclude(path_regex=r"/events$")

# The stateful run keeps to the resource lifecycles (fewer rules: more chained steps).
lifecycles = schema.include(
    path_regex=r"^/api/(generate|v1/(characters|stories|jobs))(/\{[a-z_]+\})?(/cancel)?$"
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

STATUSES: dict[str, set[int]] = {}
"""Statuses seen per operation (printed by -s runs to show the fuzzing got past auth)."""


@dataclass
class LiveGateway:
    url: str
    settings: GatewaySettings

    def auth(self, user: str) -> dict[str, str]:
        token = issue_token(self.settings.jwt_secret, user, UserTier.PAID, 3600)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def live_gateway(pg_dsn_base: str) -> Iterator[LiveGateway]:
    name = f"gateway_fuzz_{uuid.uuid4().hex[:10]}"
    database_url = ensure_database(pg_dsn_base, name)
    # Generous rate limits: the fuzzing is one user sending hundreds of requests a minute.
    gw_settings = gateway_settings(database_url).model_copy(
        update={"rate_limits": {"paid": {"api": 100_000, "generate": 100_000}}}
    )
    broker = InMemoryBroker()
    app = create_app(
        gw_settings,
        publisher=broker.publisher(),
        consumer_factory=broker.consumer,
        blob_store=InMemoryBlobStore(),
    )
    try:
        with serve(app) as url:
            yield LiveGateway(url=url, settings=gw_settings)
    finally:
        print("\n".join(f"{op}: {sorted(codes)}" for op, codes in sorted(STATUSES.items())))
        drop_database(pg_dsn_base, name)


def _record(case: schemathesis.Case[Any], status_code: int) -> None:
    STATUSES.setdefault(f"{case.method} {case.path}", set()).add(status_code)


@schema.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_answer_is_documented_and_none_is_a_server_error(
    case: schemathesis.Case[Any], live_gateway: LiveGateway
) -> None:
    response = case.call(
        base_url=live_gateway.url, headers=live_gateway.auth("fuzz-user"), timeout=15
    )
    _record(case, response.status_code)
    case.validate_response(response, checks=CHECKS)


def test_stateful_sequences_follow_the_links(live_gateway: LiveGateway) -> None:
    class Sequences(lifecycles.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # A fresh user per sequence: what a step sees depends only on its own sequence
            # (Hypothesis replays sequences and insists they draw the same way again).
            self.headers = live_gateway.auth(f"fuzz-{uuid.uuid4().hex[:8]}")

        def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
            return {"base_url": live_gateway.url, "headers": self.headers, "timeout": 15}

        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case[Any],
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            _record(case, response.status_code)
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    Sequences.run(
        settings=settings(
            max_examples=30,
            stateful_step_count=8,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],
        )
    )
