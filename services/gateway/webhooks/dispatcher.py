"""The webhook dispatcher: a background task of each gateway replica.

It claims due deliveries with `FOR UPDATE SKIP LOCKED` and, in the same statement,
moves their next attempt a lease into the future and counts the attempt, so replicas
never send the same delivery at once and a replica that dies mid-send leaves it to be
retried when the lease ends. The POST itself happens outside any transaction, with a
short timeout and at most `webhook_concurrency` in flight, so a slow receiver holds
neither a database connection nor the event pipeline. Non-2xx answers, timeouts and
connection errors are retried with exponential backoff until `webhook_max_attempts`;
a destination refused by the SSRF rules is not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from typing import Any

import asyncpg
import httpx

from imagegen.metrics import instruments
from services.gateway.webhooks.signing import signed_headers
from services.gateway.webhooks.targets import TargetPolicy, WebhookUrlError, resolve

log = logging.getLogger(__name__)
USER_AGENT = "imagegen-webhooks/1"


class WebhookDispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        policy: TargetPolicy,
        default_secret: str | None,
        timeout_s: float = 5.0,
        max_attempts: int = 6,
        backoff_s: float = 120.0,
        backoff_max_s: float = 1800.0,
        concurrency: int = 8,
        poll_s: float = 1.0,
        verify: ssl.SSLContext | bool = True,
        idle_s: float = 30.0,
    ) -> None:
        self._pool = pool
        self._verify = verify
        self._policy = policy
        self._default_secret = default_secret
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._concurrency = concurrency
        self._poll_s = poll_s
        # It sleeps until the next pending delivery falls due (the claim says when), woken
        # by the projection's enqueues and its own finished sends; at most `idle_s`, a safety
        # net for deliveries another replica enqueued or left leased when it died.
        self._idle_s = max(idle_s, poll_s)
        self._next_s: float | None = None
        # Longer than one attempt can take: a live sender always finishes first.
        self._lease_s = timeout_s * 2 + 30.0
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def backoff(self, attempt: int) -> float:
        """Delay before the attempt after `attempt`: doubling, capped, with 0-20% jitter
        so replicas' retries to one receiver spread out."""
        base: float = min(self._backoff_s * 2.0 ** (attempt - 1), self._backoff_max_s)
        return base * (1.0 + random.random() * 0.2)  # jitter, not crypto

    def start(self) -> None:
        """Run in the background until `aclose()`."""
        self._task = asyncio.create_task(self.run(), name="gateway-webhooks")

    async def aclose(self, grace_s: float = 10.0) -> None:
        """Stop claiming; give in-flight sends `grace_s`, then cancel them (their leases
        expire and another replica retries)."""
        self.stop()
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_s)
        except TimeoutError:
            log.warning("event=webhook_stop_timeout grace_s=%.1f", grace_s)
            for sending in list(self._inflight):
                sending.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except Exception:
            log.exception("event=webhook_dispatcher_failed")

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()

    async def run(self) -> None:
        """Claim and send due deliveries until `stop()`; in-flight sends are awaited."""
        async with httpx.AsyncClient(
            timeout=self._timeout_s,
            follow_redirects=False,  # a redirect could point anywhere: not followed
            headers={"User-Agent": USER_AGENT},
            trust_env=False,
            verify=self._verify,
        ) as client:
            try:
                while not self._stopping:
                    claimed = 0
                    free = self._concurrency - len(self._inflight)
                    if free > 0:
                        try:
                            claimed = await self._claim_and_send(client, free)
                        except (OSError, asyncpg.PostgresError) as exc:
                            log.warning("event=webhook_claim_failed error=%s", exc)
                    if claimed and claimed == free:
                        continue  # more may be due
                    self._wakeup.clear()
                    wait = self._idle_s if self._next_s is None else self._next_s
                    if wait <= 0:  # due but locked by another replica, or no room here
                        wait = self._poll_s
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), min(wait, self._idle_s))
            finally:
                if self._inflight:
                    await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _claim_and_send(self, client: httpx.AsyncClient, limit: int) -> int:
        found = await self._pool.fetch(
            "WITH claimed AS (UPDATE webhook_deliveries d SET attempts = d.attempts + 1,"
            " next_attempt_at = clock_timestamp() + make_interval(secs => $2)"
            " FROM (SELECT id FROM webhook_deliveries"
            "       WHERE state = 'pending' AND next_attempt_at <= clock_timestamp()"
            "       ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due,"
            "      webhooks w"
            " WHERE d.id = due.id AND w.job_id = d.job_id"
            " RETURNING d.id, d.job_id, d.url, d.body, d.attempts, w.secret),"
            # When the next pending delivery other than these falls due (seconds, or NULL).
            " later AS (SELECT extract(epoch FROM min(next_attempt_at) - clock_timestamp())"
            "   ::float8 AS next_s FROM webhook_deliveries"
            "   WHERE state = 'pending' AND id NOT IN (SELECT id FROM claimed))"
            " SELECT later.next_s, c.* FROM later LEFT JOIN claimed c ON true",
            limit,
            self._lease_s,
        )
        self._next_s = found[0]["next_s"] if found else None
        rows = [r for r in found if r["id"] is not None]
        for row in rows:
            task = asyncio.create_task(self._send(client, dict(row)), name=f"webhook-{row['id']}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(rows)

    async def _send(self, client: httpx.AsyncClient, row: dict[str, Any]) -> None:
        attempt: int = row["attempts"]
        secret = row["secret"] or self._default_secret
        body = row["body"].encode()
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        refused = False
        try:
            if not secret:
                refused, error = True, "no secret to sign with (none given, no server default)"
            else:
                target = await resolve(row["url"], self._policy)
                headers = {
                    "Content-Type": "application/json",
                    "Host": target.host_header,
                    **signed_headers(secret, row["id"], body),
                }
                extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
                async with client.stream(
                    "POST", target.url, content=body, headers=headers, extensions=extensions
                ) as response:
                    status = response.status_code  # the body is never read
        except WebhookUrlError as exc:
            refused, error = True, f"refused: {exc}"
        except (httpx.HTTPError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        delivered = status is not None and 200 <= status < 300
        if status is not None and not delivered:
            error = f"HTTP {status}"
        elapsed_ms = int((time.monotonic() - started) * 1000)
        outcome = "delivered" if delivered else "refused" if refused else "failed"
        instruments().webhook_deliveries.add(1, {"outcome": outcome})
        try:
            await self._record(row, attempt, status, error, elapsed_ms, delivered, refused)
        except (OSError, asyncpg.PostgresError) as exc:
            # The lease ends and the delivery is tried again: at least once, never lost.
            log.warning("event=webhook_record_failed delivery_id=%s error=%s", row["id"], exc)
        self.wake()  # room for another send, and maybe a retry to time
        log.info(
            "event=webhook_attempt delivery_id=%s job_id=%s attempt=%d outcome=%s status=%s"
            " error=%s",
            row["id"],
            row["job_id"],
            attempt,
            outcome,
            status,
            error,
        )

    async def _record(
        self,
        row: dict[str, Any],
        attempt: int,
        status: int | None,
        error: str | None,
        elapsed_ms: int,
        delivered: bool,
        refused: bool,
    ) -> None:
        give_up = refused or attempt >= self._max_attempts
        state = "delivered" if delivered else "failed" if give_up else "pending"
        delay = None if delivered or give_up else self.backoff(attempt)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code,"
                " error, duration_ms) VALUES ($1, $2, clock_timestamp(), $3, $4, $5)"
                " ON CONFLICT (delivery_id, attempt) DO NOTHING",
                row["id"],
                attempt,
                status,
                error,
                elapsed_ms,
            )
            await conn.execute(
                "UPDATE webhook_deliveries SET state = $2,"
                " next_attempt_at = CASE WHEN $3::float8 IS NULL THEN NULL"
                "   ELSE clock_timestamp() + make_interval(secs => $3::float8) END,"
                " delivered_at = CASE WHEN $2 = 'delivered' THEN clock_timestamp() END"
                " WHERE id = $1 AND attempts = $4",
                row["id"],
                state,
                delay,
                attempt,
            )
