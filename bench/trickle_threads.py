"""CPU and wake-ups per thread of the local stack while images trickle through it.

`bench/idle_wakes.py` reads a stack at rest; this one reads it under a steady trickle
(`--rate` one-image packs a second, 768 px, the `instant` backend), where costs that only
run while records flow show: a thread that spins while another holds its client, a loop
that polls faster while work is in flight. It starts the stack as `imagegen up` does
(Apache Kafka) on a PostgreSQL server of its own, opens one user's event stream, posts for
`--warmup` seconds, then reads every thread's schedstat and voluntary context switches
over `--window` seconds of the same trickle.

    .venv/bin/python bench/trickle_threads.py [--rate 1] [--window 30] [--label after]

Writes bench/results/trickle_threads-LABEL.json, with `uptime` (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import httpx
from _common import (
    OurStack,
    SseEvent,
    bench_postgres,
    character_and_stream,
    machine,
    our_stack,
    paced,
    uptime,
    write_result,
)
from idle_wakes import _stack_pids, sample

IMAGE_SIZE = 768


async def _measure(stack: OurStack, rate: float, warmup: float, window: float) -> dict[str, Any]:
    line = next(line for line in stack.output if line.startswith("token: "))
    token = line.split(": ", 1)[1].strip()
    headers = {"Authorization": f"Bearer {token}"}
    refused: list[int] = []

    def ignore(_event: SseEvent) -> None:
        pass

    async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:
        character, stream = await character_and_stream(client, stack.gateway, token, ignore)
        body = {"character_id": character, "image_count": 1}
        body |= {"width": IMAGE_SIZE, "height": IMAGE_SIZE}

        async def post(_i: int) -> None:
            response = await client.post("/api/generate", json=body, headers=headers)
            if response.status_code != 202:
                refused.append(response.status_code)

        try:
            await paced(rate, warmup, post)
            pids = _stack_pids(stack.data_dir)
            load = asyncio.create_task(paced(rate, window, post))
            table = await asyncio.to_thread(sample, pids, window)
            await load
        finally:
            stream.cancel()
    return {"processes": table, "refused_posts": len(refused)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1.0, help="one-image packs a second")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured")
    parser.add_argument("--top", type=int, default=25, help="busiest threads printed")
    parser.add_argument("--label", default="run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trickle-threads-") as tmp:
        workdir = Path(tmp)
        with bench_postgres(workdir) as pg_port, our_stack(workdir, pg_port=pg_port) as stack:
            result = asyncio.run(_measure(stack, args.rate, args.warmup, args.window))
    table = result["processes"]
    for name, row in sorted(table.items(), key=lambda kv: -kv[1]["cores"]):
        print(f"{name:12s} {row['cores'] * 1000:7.2f} ms/s  {row['wakes_per_s']:7.1f} wakes/s")
    threads = [
        (t["cores"], t["wakes_per_s"], name, t["thread"])
        for name, row in table.items()
        for t in row["threads"]
    ]
    for cores, wakes, name, thread in sorted(threads, reverse=True)[: args.top]:
        print(f"  {name:12s} {thread:28s} {cores * 1000:7.2f} ms/s  {wakes:7.1f} wakes/s")
    load = uptime()
    print("uptime:", load)
    path = write_result(
        f"trickle_threads-{args.label}",
        {
            "rate": args.rate,
            "window_s": args.window,
            **result,
            "uptime": load,
            "machine": machine(),
        },
    )
    print("written", path)


if __name__ == "__main__":
    main()
