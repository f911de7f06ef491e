"""Where an idle stack's CPU goes, per thread: librdkafka's (rdk:main, rdk:broker*), the
producer poller, asyncio's and the rest, per process, over a quiet window.

Starts the stack as `imagegen up` does (Apache Kafka, the `instant` backend), lets it
settle, then reads utime + stime of every thread of every process of the stack from
/proc/<pid>/task/*/stat at the start and the end of the window.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/idle_threads.py --idle 30 --label before
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import _process_name, machine, our_stack, uptime, write_result

TICK = os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of `pid`, keyed by '<tid> <name>'."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        out[f"{task.name} {name}"] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            found.append(child)
            todo.append(child)
    return found


def _name(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return "?"
    return _process_name([c for c in cmdline if c])


def _kind(thread: str) -> str:
    """Threads grouped by role: librdkafka's per-broker threads count as one kind."""
    name = thread.split(" ", 1)[1]
    return re.sub(r"\d+$", "", re.sub(r"rdk:broker.*", "rdk:broker", name))


def sample(root: int, idle_s: float) -> dict[str, Any]:
    pids = {pid: _name(pid) for pid in _descendants(root)}
    start = {pid: _threads(pid) for pid in pids}
    time.sleep(idle_s)
    per_process: dict[str, dict[str, float]] = {}
    for pid, name in pids.items():
        end = _threads(pid)
        kinds = per_process.setdefault(f"{name}[{pid}]", {})
        for thread, spent in end.items():
            used = spent - start[pid].get(thread, 0.0)
            if used > 0:
                kind = _kind(thread)
                kinds[kind] = round(kinds.get(kind, 0.0) + used / idle_s, 4)
    return {
        proc: dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
        for proc, kinds in sorted(per_process.items())
        if kinds
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--label", default="run")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="idle-threads-") as tmp,
        our_stack(Path(tmp) / "stack", backend="instant"),
    ):
        time.sleep(args.settle)
        table = sample(os.getpid(), args.idle)
        load = uptime()
    for proc, kinds in table.items():
        total = sum(kinds.values())
        print(f"{proc:28s} {total:.4f} cores  " + " ".join(f"{k}={v}" for k, v in kinds.items()))
    print("uptime:", load)
    path = write_result(
        f"idle_threads-{args.label}",
        {"idle_s": args.idle, "cores": table, "uptime": load, "machine": machine()},
    )
    print("written", path)


if __name__ == "__main__":
    main()
