"""Webhooks meet the gateway: request checks (422 naming the field) and the dispatcher
built from settings."""

from __future__ import annotations

import ssl

import asyncpg

from services.gateway.problems import Loc, field_error
from services.gateway.settings import GatewaySettings
from services.gateway.webhooks.dispatcher import WebhookDispatcher
from services.gateway.webhooks.models import WebhookIn
from services.gateway.webhooks.targets import TargetPolicy, WebhookUrlError, check_url


def policy_of(settings: GatewaySettings) -> TargetPolicy:
    return TargetPolicy.of(settings.webhook_allowed_hosts, settings.env)


def require_acceptable(
    hook: WebhookIn | None, settings: GatewaySettings, loc: Loc = ("body", "webhook")
) -> None:
    """Refuse, before anything is recorded, a webhook this server would not send."""
    if hook is None:
        return
    try:
        check_url(hook.url, policy_of(settings))
    except WebhookUrlError as exc:
        raise field_error((*loc, "url"), str(exc)) from None
    if hook.secret is None and settings.webhook_secret is None:
        raise field_error(
            (*loc, "secret"),
            "required: this server has no default webhook secret to sign with",
        )


def build_dispatcher(pool: asyncpg.Pool, settings: GatewaySettings) -> WebhookDispatcher:
    secret = settings.webhook_secret
    return WebhookDispatcher(
        pool,
        policy=policy_of(settings),
        default_secret=secret.get_secret_value() if secret is not None else None,
        timeout_s=settings.webhook_timeout_s,
        max_attempts=settings.webhook_max_attempts,
        backoff_s=settings.webhook_backoff_s,
        backoff_max_s=settings.webhook_backoff_max_s,
        concurrency=settings.webhook_concurrency,
        poll_s=settings.webhook_poll_s,
        verify=tls_verification(settings),
    )


def tls_verification(settings: GatewaySettings) -> ssl.SSLContext | bool:
    """Certificates are always verified, against the operator's CAs when given."""
    if settings.webhook_ca_bundle is None:
        return True
    return ssl.create_default_context(cafile=str(settings.webhook_ca_bundle))
