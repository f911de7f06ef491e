"""The broker refusing this client: wrong credentials, an untrusted certificate, a missing ACL.

librdkafka reports these as ordinary errors, scattered over error callbacks, consumer polls
and delivery reports, and retries them for ever: a wrong password looked like a broker
that never answers. Here each becomes one `BrokerAccessError` that names the cause and the
setting to check, logged at ERROR (once per cause and half minute, not once per retry),
and remembered so that readiness (`imagegen.health.broker_check`) answers 503 with it.

One watch per process (`ACCESS`): a process runs as one Kafka principal, and its
producer, consumers and readiness probe must agree on what the broker refused.
"""

from __future__ import annotations

import logging
import re
import threading
import time

from confluent_kafka import KafkaError, KafkaException

from imagegen.errors import BrokerAccessError

log = logging.getLogger(__name__)

_AUTHENTICATION = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})
_AUTHORIZATION = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "group",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id",
}
# librdkafka reports a failed handshake as _SSL, and its retries often as _TRANSPORT.
_TLS_TEXT = ("SSL handshake failed", "certificate verify failed", "SSL routines")
_UNCONNECTED = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)
_SUBSCRIBED = re.compile(r"topic not available: ([^:\s]+)")


def _tls_reason(text: str) -> str:
    if "certificate verify failed" in text:
        return "the broker's certificate is not trusted by this client"
    if "alert" in text:  # the broker refused ours: unknown ca, bad/required certificate
        return "the broker refused this client's certificate"
    return "the handshake failed"


class AccessWatch:
    """What the broker refused lately, by cause; thread-safe (librdkafka calls from its own
    threads). A cause is forgotten once the client succeeds at what it was refused (or
    after `forget_after_s` unseen: a consumer hears of a topic it may not read only at each
    metadata refresh, every 5 minutes by default)."""

    def __init__(self, forget_after_s: float = 600.0, log_every_s: float = 30.0) -> None:
        self.principal = "this client"
        """Who connects, as `imagegen.kafka.security.principal` says: set with the config."""
        self._forget_after = forget_after_s
        self._log_every = log_every_s
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, str]] = {}
        self._logged: dict[str, tuple[float, str]] = {}

    def explain(
        self, err: KafkaError, *, topic: str | None = None, group: str | None = None
    ) -> tuple[str, BrokerAccessError] | None:
        """(cause, error) when `err` is the broker refusing this client, else None."""
        code, text = err.code(), err.str()
        if code in _AUTHENTICATION:
            return "authentication", BrokerAccessError(
                f"Kafka authentication failed for {self.principal}: check"
                f" IMAGEGEN_KAFKA_SASL_USERNAME and IMAGEGEN_KAFKA_SASL_PASSWORD ({text})"
            )
        if code == KafkaError._SSL or (
            code == KafkaError._TRANSPORT and any(t in text for t in _TLS_TEXT)
        ):
            return "tls", BrokerAccessError(
                f"TLS handshake with the Kafka broker failed for {self.principal}:"
                f" {_tls_reason(text)}: check IMAGEGEN_KAFKA_SSL_CA_LOCATION (the CA that"
                " signed the broker's certificate) and the client certificate"
                f" (IMAGEGEN_KAFKA_SSL_CERTIFICATE_LOCATION) ({text})"
            )
        kind = _AUTHORIZATION.get(code)
        if kind is None:
            return None
        if kind == "topic" and topic is None and (found := _SUBSCRIBED.search(text)):
            topic = found.group(1)
        name = {"topic": topic, "group": group}.get(kind)
        what = f"{kind} {name}" if name else f"its {kind}"
        return f"{kind}:{name or ''}", BrokerAccessError(
            f"Kafka denied {self.principal} access to {what} ({err.name()}): grant the"
            f" ACL it needs (deploy/k8s KafkaUser of this service) ({text})"
        )

    def note(
        self, err: KafkaError, *, topic: str | None = None, group: str | None = None
    ) -> BrokerAccessError | None:
        """The error for `err` if it is an access problem (remembered, logged), else None."""
        explained = self.explain(err, topic=topic, group=group)
        if explained is None:
            return None
        cause, error = explained
        now = time.monotonic()
        message = str(error)
        with self._lock:
            self._seen[cause] = (now, message)
            last = self._logged.get(cause)
            loud = last is None or last[1] != message or now - last[0] >= self._log_every
            if loud:
                self._logged[cause] = (now, message)
        if loud:
            log.error("event=kafka_access_denied cause=%s error=%r", cause, message)
        return error

    def refusal(self, err: KafkaError, *, topic: str | None = None) -> BrokerAccessError | None:
        """`note`; and a failure for want of a connection (a delivery or metadata timeout)
        while the broker refuses this client's login or handshake is that refusal."""
        denied = self.note(err, topic=topic)
        if denied is None and err.code() in _UNCONNECTED:
            denied = self.problem(connecting=True)
        return denied

    def error_cb(self, err: KafkaError) -> None:
        """librdkafka's `error_cb` for a producer or admin client.

        A fatal error is raised again: without an `error_cb` librdkafka's Python client
        raises it from `poll()`, which is how `KafkaPublisher` learns of it.
        """
        if err.fatal() or err.code() == KafkaError._FATAL:
            raise KafkaException(err)
        self.consumer_error_cb(err)

    def consumer_error_cb(self, err: KafkaError) -> None:
        """librdkafka's `error_cb` for a consumer: notes refusals (a consumer hears of a
        failed login or handshake only here) and never raises - a consumer's fatal error
        comes back from `poll()` as a `_FATAL` message, which `KafkaConsumer` raises."""
        if self.note(err) is None and err.code() != KafkaError._ALL_BROKERS_DOWN:
            log.debug("event=kafka_client_error error=%s", err)

    def succeeded(self, *, topic: str | None = None, group: str | None = None) -> None:
        """The client got through: forget its connection problems and `topic`'s/`group`'s."""
        with self._lock:
            for cause in ("authentication", "tls", f"topic:{topic or ''}", f"group:{group or ''}"):
                self._seen.pop(cause, None)
            if topic is not None:
                self._seen.pop("topic:", None)

    def problem(self, *, connecting: bool = False) -> BrokerAccessError | None:
        """The latest access problem still standing, if any; with `connecting`, only a
        refused login or handshake (no request gets through until it is fixed)."""
        now = time.monotonic()
        with self._lock:
            live = [
                (seen, msg)
                for cause, (seen, msg) in self._seen.items()
                if now - seen < self._forget_after
                and (not connecting or cause in ("authentication", "tls"))
            ]
        if not live:
            return None
        return BrokerAccessError(max(live)[1])

    def reset(self) -> None:
        """Forget everything (tests)."""
        self.principal = "this client"
        with self._lock:
            self._seen.clear()
            self._logged.clear()


ACCESS = AccessWatch()
