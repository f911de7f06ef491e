"""Time from POST to the first Server-Sent Event, as a browser sees it.

Starts the whole stack (`imagegen up`, instant backend) and, `--jobs` times at `--rate`
jobs/s, does what the web page does: POST /api/generate, then open the job's own stream
(`GET /api/v1/jobs/{id}/events`, a new connection) and wait for its first event. Reports
p50/p95/p99 of POST -> first event (the stream replays what was logged before it opened,
so a slow connect cannot lose the event), and which event type came first.

bench/orchestration.py measures the same from a stream opened beforehand (the user-wide
`/api/v1/events`), for imagegen and the Celery baseline.

    .venv/bin/python bench/first_event.py [--jobs 40] [--rate 2]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from _common import (
    OurStack,
    SseEvent,
    machine,
    ms,
    our_stack,
    paced,
    percentile,
    sse_follow,
    write_result,
)


class _First(Exception):
    """Raised from the event callback to stop reading after the first event."""

    def __init__(self, event: SseEvent) -> None:
        super().__init__(event.type)
        self.event = event


def _stop_at_first(event: SseEvent) -> None:
    raise _First(event)


async def one(client: httpx.AsyncClient, stack: OurStack, token: str, character: str) -> Any:
    posted = time.monotonic()
    response = await client.post(
        "/api/generate",
        json={"character_id": character, "image_count": 1},
        headers={"Authorization": f"Bearer {token}"},
    )
    accepted = time.monotonic()
    if response.status_code != 202:
        return None
    job_id = response.json()["job_id"]
    try:
        await asyncio.wait_for(
            sse_follow(f"{stack.gateway}/api/v1/jobs/{job_id}/events", token, _stop_at_first), 60
        )
    except _First as first:
        return first.event.type, accepted - posted, first.event.at - posted
    return None


async def run(stack: OurStack, args: argparse.Namespace) -> dict[str, Any]:
    token = stack.token("first-event")
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:
        response = await client.post(
            "/api/v1/characters",
            json={"name": "Mira", "attributes": {"hairColour": "red"}, "artStyle": "realistic"},
            headers={"Authorization": f"Bearer {token}"},
        )
        response.raise_for_status()
        character = response.json()["id"]
        outcomes: list[Any] = []

        async def fire(i: int) -> None:
            outcomes.append(await one(client, stack, token, character))

        await paced(args.rate, args.warmup / args.rate, fire)  # warm-up, not counted
        outcomes.clear()
        await paced(args.rate, args.jobs / args.rate, fire)
    done = [o for o in outcomes if o is not None]
    firsts = [o[2] for o in done]
    accepts = [o[1] for o in done]
    return {
        "jobs": args.jobs,
        "failed": len(outcomes) - len(done),
        "first_event_types": dict(Counter(o[0] for o in done)),
        "post_to_first_event_ms": {
            "p50": ms(percentile(firsts, 50)),
            "p95": ms(percentile(firsts, 95)),
            "p99": ms(percentile(firsts, 99)),
            "max": ms(max(firsts)) if firsts else None,
        },
        "post_response_ms": {
            "p50": ms(percentile(accepts, 50)),
            "p95": ms(percentile(accepts, 95)),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40, help="measured jobs")
    parser.add_argument("--rate", type=float, default=2.0, help="jobs/s")
    parser.add_argument("--warmup", type=int, default=6, help="jobs before measuring")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "benchmark": "first_event",
        "machine": machine(),
        "settings": vars(args),
    }
    with tempfile.TemporaryDirectory(prefix="bench-first-") as tmp, our_stack(Path(tmp)) as stack:
        results.update(asyncio.run(run(stack, args)))
    first = results["post_to_first_event_ms"]
    print(
        f"POST -> first SSE event on the job's stream: p50 {first['p50']} ms, "
        f"p95 {first['p95']} ms, p99 {first['p99']} ms ({results['jobs']} jobs, "
        f"{results['failed']} failed; first events {results['first_event_types']})"
    )
    write_result("first_event", results)


if __name__ == "__main__":
    main()
