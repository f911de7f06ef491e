"""What the stack costs at rest and per image: idle CPU per process, PostgreSQL transactions.

Starts the stack as `imagegen up` does (Apache Kafka, the `instant` backend) on a
PostgreSQL server of its own (bench/_common.py), with one user's event stream open, then:

- idle: `--idle` seconds with nothing posted: CPU per process (psutil, in cores), the
  machine's load average, and PostgreSQL transactions per second (pg_stat_database
  `xact_commit` of the stack's database: pollers, tickers and relays at rest);
- packs: `--packs` packs of `--images` images, posted one after another, each waited for
  until all its `image_stored` events arrived on the stream; the `xact_commit` delta per
  stored image, with the idle rate over the same time subtracted;
- attribution: the services reach PostgreSQL through bench/meters.py's counting proxy,
  which tallies round trips, transactions and statements by `application_name` (one per
  service schema): per image over the packs, and per second at rest.

Writes bench/results/lean_costs.json.

    .venv/bin/python bench/lean_costs.py [--idle 60] [--packs 3] [--images 4] [--label after]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from _common import (
    CpuMeter,
    OurStack,
    SseEvent,
    bench_postgres,
    character_and_stream,
    our_stack,
    uptime,
    write_result,
)
from meters import PostgresProxy, subtract

# PostgreSQL flushes a backend's counters when it goes idle, at most once a second and
# otherwise within 10 s: a reading is taken this long after the work it should include.
STATS_SETTLE_S = 11.0


async def xact_commits(dsn: str) -> int:
    """Transactions committed so far in the stack's database (all services share it)."""
    conn = await asyncpg.connect(dsn)
    try:
        value: int = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return value
    finally:
        await conn.close()


def _attribution(
    proxy: PostgresProxy | None, start: dict[str, Any], per: float
) -> dict[str, Any] | None:
    """The proxy's tallies since `start`, divided by `per` (images, or seconds)."""
    if proxy is None:
        return None
    now = subtract(proxy.attribution(), start)
    apps = sorted(set(now["round_trips"]) | set(now["transactions"]))
    out: dict[str, Any] = {}
    for app in apps:
        statements = {
            text: round(n / per, 2)
            for text, n in sorted(now["statements"].get(app, {}).items(), key=lambda kv: -kv[1])
            if n
        }
        out[app] = {
            "round_trips": round(now["round_trips"].get(app, 0) / per, 2),
            "transactions": round(now["transactions"].get(app, 0) / per, 2),
            "statements": statements,
        }
    return out


def _print_attribution(title: str, table: dict[str, Any] | None) -> None:
    if not table:
        return
    print(f"{title}: application  transactions  round trips")
    for app, row in table.items():
        print(f"  {app:28} {row['transactions']:8} {row['round_trips']:8}")
        for text, n in list(row["statements"].items())[:12]:
            print(f"      {n:7}  {text[:110]}")


async def measure(
    stack: OurStack, args: argparse.Namespace, proxy: PostgresProxy | None = None
) -> dict[str, Any]:
    dsn = stack.database
    token = stack.token("lean-0")
    auth = {"Authorization": f"Bearer {token}"}
    stored: dict[str, int] = {}

    def on_event(event: SseEvent) -> None:
        job_id = event.data.get("job_id")
        if event.type == "image_stored" and isinstance(job_id, str):
            stored[job_id] = stored.get(job_id, 0) + 1

    async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:
        character, stream = await character_and_stream(client, stack.gateway, token, on_event)

        async def pack(count: int) -> None:
            posted = await client.post(
                "/api/generate",
                json={"character_id": character, "image_count": count},
                headers=auth,
            )
            posted.raise_for_status()
            job_id = posted.json()["job_id"]
            deadline = time.monotonic() + 120
            while stored.get(job_id, 0) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pack {job_id}: {stored.get(job_id, 0)}/{count}")
                await asyncio.sleep(0.05)

        try:
            await pack(args.images)  # warm-up
            await asyncio.sleep(STATS_SETTLE_S)
            cpu = CpuMeter()
            before = await xact_commits(dsn)
            mark = proxy.attribution() if proxy else {}
            started = time.monotonic()
            await asyncio.sleep(args.idle)
            idle_s = time.monotonic() - started
            idle_cpu = cpu.seconds()
            machine = cpu.others()
            load = await asyncio.to_thread(uptime)
            idle_xacts = await xact_commits(dsn) - before - 1  # less this reading's own
            idle_rate = idle_xacts / idle_s
            idle_table = _attribution(proxy, mark, idle_s)

            before = await xact_commits(dsn)
            mark = proxy.attribution() if proxy else {}
            started = time.monotonic()
            for _ in range(args.packs):
                await pack(args.images)
            await asyncio.sleep(STATS_SETTLE_S)
            busy_s = time.monotonic() - started
            delta = await xact_commits(dsn) - before - 1
            pack_table = _attribution(proxy, mark, args.packs * args.images)
        finally:
            stream.cancel()
            await asyncio.gather(stream, return_exceptions=True)
    images = args.packs * args.images
    work = max(0.0, delta - idle_rate * busy_s)
    return {
        "label": args.label,
        "idle": {
            "seconds": round(idle_s, 1),
            "cpu_cores": {name: round(s / idle_s, 4) for name, s in idle_cpu.items()},
            "cpu_cores_total": round(sum(idle_cpu.values()) / idle_s, 4),
            "machine": machine,
            "uptime": load,
            "pg_xacts_per_s": round(idle_rate, 2),
            "pg_by_application_per_s": idle_table,
        },
        "packs": {
            "packs": args.packs,
            "images_per_pack": args.images,
            "seconds": round(busy_s, 1),
            "pg_xacts_total": delta,
            "pg_xacts_per_image": round(work / images, 1),
            "note": "xact_commit delta of the stack's database, idle rate subtracted",
            "pg_by_application_per_image": pack_table,
            "pg_attribution_note": "from the proxy, idle not subtracted; the transactions"
            " are inferred from the client's messages (BEGIN, or an implicit one per Sync"
            " or simple Query outside a block)",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=60.0, help="idle measurement, s")
    parser.add_argument("--packs", type=int, default=3)
    parser.add_argument("--images", type=int, default=4, help="images per pack")
    parser.add_argument("--label", default="run", help="a name for this run in the output")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lean-costs-") as tmp:
        workdir = Path(tmp)
        with bench_postgres(workdir) as pg_port:
            if pg_port is None:
                raise SystemExit("needs Debian's PostgreSQL server binaries")
            with (
                PostgresProxy(pg_port) as proxy,
                our_stack(workdir / "stack", backend="instant", pg_port=proxy.port) as stack,
            ):
                result = asyncio.run(measure(stack, args, proxy))
    print(f"idle {result['idle']['cpu_cores_total']} cores: {result['idle']['cpu_cores']}")
    print(f"idle {result['idle']['pg_xacts_per_s']} PostgreSQL transactions/s")
    print(f"load: {result['idle']['uptime']}")
    print(f"{result['packs']['pg_xacts_per_image']} PostgreSQL transactions per image")
    _print_attribution("at rest, per second", result["idle"]["pg_by_application_per_s"])
    _print_attribution("per image", result["packs"]["pg_by_application_per_image"])
    path = write_result(f"lean_costs_{args.label}", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
