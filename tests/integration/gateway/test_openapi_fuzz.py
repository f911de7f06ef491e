"""schemathesis against the gateway's own OpenAPI schema: no input may cause a 5xx.

The app runs in a real uvicorn server (its lifespan, real PostgreSQL, the in-memory
broker and blob store) and every generated request carries a valid token, so the fuzzing
gets past authentication into the handlers. A few examples per operation keep the run
short; event streams are left out (a user's stream never ends by design).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings

from imagegen.blobstore import InMemoryBlobStore
from imagegen.kafka.memory import InMemoryBroker
from imagegen.stack.postgres import drop_database, ensure_database
from schemas.requests import UserTier
from services.gateway.app import create_app
from services.gateway.auth import issue_token
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.conftest import gateway_settings

pytestmark = pytest.mark.integration

# The schema does not depend on runtime state: build it from an app that is never started.
schema = schemathesis.openapi.from_dict(create_app(GatewaySettings(env="test")).openapi()).exclude(
    path_regex=r"/events$"
)


STATUSES: dict[str, set[int]] = {}
"""Statuses seen per operation (printed by -s runs to show the fuzzing got past auth)."""


@dataclass
class LiveGateway:
    url: str
    settings: GatewaySettings

    def auth(self, user: str) -> dict[str, str]:
        token = issue_token(self.settings.jwt_secret, user, UserTier.PAID, 3600)
        return {"Authorization": f"Bearer {token}"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def live_gateway(pg_dsn_base: str) -> Iterator[LiveGateway]:
    name = f"gateway_fuzz_{uuid.uuid4().hex[:10]}"
    database_url = ensure_database(pg_dsn_base, name)
    gw_settings = gateway_settings(database_url)
    broker = InMemoryBroker()
    app = create_app(
        gw_settings,
        publisher=broker.publisher(),
        consumer_factory=broker.consumer,
        blob_store=InMemoryBlobStore(),
    )
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.05)
        yield LiveGateway(url=f"http://127.0.0.1:{port}", settings=gw_settings)
    finally:
        print("\n".join(f"{op}: {sorted(codes)}" for op, codes in sorted(STATUSES.items())))
        server.should_exit = True
        thread.join(15)
        drop_database(pg_dsn_base, name)


@schema.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_input_causes_a_server_error(
    case: schemathesis.Case[Any], live_gateway: LiveGateway
) -> None:
    response = case.call(
        base_url=live_gateway.url, headers=live_gateway.auth("fuzz-user"), timeout=15
    )
    STATUSES.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )
