"""https webhooks over real TLS: the receiver's certificate is verified against the name
in the webhook URL (the connection goes to the address checked at delivery time, with
that name as SNI), and trusted through the operator's CA bundle when one is given."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.routing import Route

from services.gateway.settings import GatewaySettings
from services.gateway.webhooks import verify_signature
from tests.fixtures.http_server import serve_app
from tests.fixtures.tls import LocalCA
from tests.unit.gateway.test_webhooks import (
    SECRET,
    Receiver,
    _finish,
    _gateway,
    _pack_with_webhook,
    _settings,
    _until,
)

HOOK_HOST = "hooks.imagegen.test"


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA.create(tmp_path / "ca")


@pytest.fixture(autouse=True)
def hook_host_is_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOOK_HOST resolves to 127.0.0.1 (no DNS here); other names resolve as usual."""
    real = asyncio.BaseEventLoop.getaddrinfo

    async def getaddrinfo(self: Any, host: Any, port: Any, **kwargs: Any) -> Any:
        return await real(self, "127.0.0.1" if host == HOOK_HOST else host, port, **kwargs)

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", getaddrinfo)


@contextmanager
def tls_receiver(ca: LocalCA, certificate_for: str) -> Iterator[Receiver]:
    hook = Receiver()
    app = Starlette(routes=[Route("/hook", hook.endpoint, methods=["POST"])])
    with serve_app(app, tls=ca.issue(certificate_for)) as url:
        hook.url = f"https://{HOOK_HOST}:{url.rsplit(':', 1)[1]}/hook"
        yield hook


async def _deliver(
    settings: GatewaySettings, user: str, receiver: Receiver, states: set[str]
) -> dict[str, Any]:
    async with _gateway(settings) as gw:
        job_id = await _pack_with_webhook(gw, user, {"url": receiver.url, "secret": SECRET})
        await gw.feed(*_finish(job_id, user))
        job = await _until(gw, user, job_id, states)
    (delivery,) = job["webhook"]["deliveries"]
    return dict(delivery)


async def test_a_receiver_with_a_certificate_from_the_trusted_ca_gets_the_webhook(
    gateway_db_url: str, ca: LocalCA, user: str
) -> None:
    with tls_receiver(ca, HOOK_HOST) as receiver:
        settings = _settings(gateway_db_url, webhook_ca_bundle=ca.bundle)
        delivery = await _deliver(settings, user, receiver, {"delivered"})
        assert [a["statusCode"] for a in delivery["log"]] == [200]
        (headers, body, _) = receiver.received[0]
        verify_signature(SECRET, headers, body)
        assert headers["host"].split(":")[0] == HOOK_HOST  # the name, though sent to an IP


async def test_a_certificate_for_another_name_is_refused_even_from_a_trusted_ca(
    gateway_db_url: str, ca: LocalCA, user: str
) -> None:
    # What an attacker who re-points the name gets with any valid certificate of theirs.
    with tls_receiver(ca, "elsewhere.imagegen.test") as receiver:
        settings = _settings(gateway_db_url, webhook_ca_bundle=ca.bundle, webhook_max_attempts=1)
        delivery = await _deliver(settings, user, receiver, {"failed"})
        (attempt,) = delivery["log"]
        assert attempt["statusCode"] is None
        assert "CERTIFICATE_VERIFY_FAILED" in attempt["error"]
        assert "hostname mismatch" in attempt["error"].lower(), attempt["error"]
        assert receiver.received == []


async def test_without_the_ca_bundle_a_private_ca_is_not_trusted(
    gateway_db_url: str, ca: LocalCA, user: str
) -> None:
    with tls_receiver(ca, HOOK_HOST) as receiver:
        settings = _settings(gateway_db_url, webhook_max_attempts=1)
        delivery = await _deliver(settings, user, receiver, {"failed"})
        (attempt,) = delivery["log"]
        assert "CERTIFICATE_VERIFY_FAILED" in attempt["error"]
        assert receiver.received == []


def test_a_ca_bundle_that_is_not_a_file_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IMAGEGEN_WEBHOOK_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(ValidationError, match=r"IMAGEGEN_WEBHOOK_CA_BUNDLE=.*missing\.pem"):
        GatewaySettings()


def test_hook_host_resolves_to_loopback_only_inside_the_tests() -> None:
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(HOOK_HOST, 443)  # the patch is the event loop's, nothing more
