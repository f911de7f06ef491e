"""CPU and wake-ups per thread of a running local stack, nanosecond-exact.

`bench/idle_threads.py` reads /proc's utime + stime, counted in clock ticks: one tick over
30 s is 0.00033 cores, about what one idle service costs, so per-service differences
drown in rounding. This reads each thread's `schedstat` (time on CPU in ns) and its
voluntary context switches (each one a sleep, so each a wake-up) at the start and the end
of a window, for the processes of a stack that `imagegen up` runs (its `services.json`
names them; SeaweedFS, Apache Kafka and `imagegen up` itself are found by command line).

    .venv/bin/python bench/idle_wakes.py --data-dir DATA --idle 30 --label after

Start the stack yourself (`imagegen up --data-dir DATA ...`), let it settle, run this.
Writes bench/results/idle_wakes-LABEL.json; record `uptime` with it (it does).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _common import machine, uptime, write_result

Snapshot = dict[str, tuple[str, int, int]]
"""thread id -> (thread name, ns on CPU, voluntary context switches)."""


def _snapshot(pid: int) -> Snapshot:
    out: Snapshot = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
            on_cpu = int((task / "schedstat").read_text().split()[0])
            status = (task / "status").read_text().splitlines()
        except OSError:
            continue
        switches = next(
            (int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt")), 0
        )
        out[task.name] = (name, on_cpu, switches)
    return out


def _stack_pids(data_dir: Path) -> dict[str, int]:
    """The stack's processes by name: its services, and the servers found by command line."""
    listed = json.loads((data_dir / "services.json").read_text())
    pids = {name: int(pid) for name, pid in listed.items()}
    marker = str(data_dir)
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_text().split("\0")
        except OSError:
            continue
        joined = " ".join(cmdline)
        if marker not in joined:
            continue
        if "weed" in cmdline[0]:
            pids["seaweedfs"] = int(proc.name)
        elif "java" in cmdline[0] and "kafka.Kafka" in joined:
            pids["kafka"] = int(proc.name)
        elif "imagegen.cli" in joined and " up " in f" {joined} ":
            pids["imagegen-up"] = int(proc.name)
    return pids


def sample(pids: dict[str, int], idle_s: float) -> dict[str, Any]:
    start = {name: _snapshot(pid) for name, pid in pids.items()}
    time.sleep(idle_s)
    table: dict[str, Any] = {}
    for name, pid in pids.items():
        rows: list[tuple[float, float, str]] = []
        for tid, (thread, on_cpu, switches) in _snapshot(pid).items():
            _, cpu0, sw0 = start[name].get(tid, (thread, 0, 0))
            if on_cpu - cpu0 or switches - sw0:
                cores = round((on_cpu - cpu0) / 1e9 / idle_s, 6)
                rows.append((cores, round((switches - sw0) / idle_s, 2), f"{thread}[{tid}]"))
        rows.sort(reverse=True)
        table[name] = {
            "cores": round(sum(row[0] for row in rows), 5),
            "wakes_per_s": round(sum(row[1] for row in rows), 1),
            "threads": [{"thread": t, "cores": c, "wakes_per_s": w} for c, w, t in rows],
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True, help="the stack's --data-dir")
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--label", default="run")
    args = parser.parse_args()
    pids = _stack_pids(args.data_dir.resolve())
    table = sample(pids, args.idle)
    load = uptime()
    for name, row in table.items():
        print(f"{name:12s} {row['cores']:.5f} cores  {row['wakes_per_s']:6.1f} wakes/s")
    print(f"total {sum(row['cores'] for row in table.values()):.5f} cores")
    print("uptime:", load)
    path = write_result(
        f"idle_wakes-{args.label}",
        {"idle_s": args.idle, "processes": table, "uptime": load, "machine": machine()},
    )
    print("written", path)


if __name__ == "__main__":
    main()
