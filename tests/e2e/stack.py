"""Runs `imagegen up` as a real process for end-to-end tests and talks to it over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from imagegen.stack.ports import free_port
from imagegen.stack.postgres import drop_database


@dataclass
class RunningStack:
    proc: subprocess.Popen[str]
    data_dir: Path
    gateway: str
    token: str
    database: str
    s3_port: int
    output: list[str] = field(default_factory=list)
    kafka_port: int = 0
    analytics: str = ""
    """The analytics service's base URL (its API, /metrics and page)."""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.gateway,
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=30,
        )

    def token_for(self, user: str, tier: str = "free") -> str:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "imagegen.cli",
                "token",
                "--user",
                user,
                "--tier",
                tier,
                "--data-dir",
                str(self.data_dir),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return out.stdout.strip()

    def service_pids(self) -> dict[str, int]:
        pids: dict[str, int] = json.loads((self.data_dir / "services.json").read_text())
        return pids

    def secrets(self) -> dict[str, str]:
        secrets: dict[str, str] = json.loads((self.data_dir / "secrets.json").read_text())
        return secrets

    def log_tails(self, lines: int = 15, extra: tuple[Path, ...] = ()) -> str:
        """The end of every service's and server's log, of `extra` logs and of `imagegen up`'s
        own output (restarts): what a failed wait shows, so that a CI log says where the
        time went without the stack's folder."""
        paths = [*sorted((self.data_dir / "logs").glob("*.log")), *extra]
        parts = [f"--- {path.name}\n{tail(path, lines)}" for path in paths]
        parts.append("--- imagegen up\n" + "".join(self.output[-lines:]))
        return "\n".join(parts)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tail(path: Path, lines: int, max_bytes: int = 256 * 1024) -> str:
    """The last `lines` lines of a log (colour codes stripped; Tansu writes them)."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - max_bytes))
            text = log.read().decode(errors="replace")
    except OSError as exc:
        return f"(unreadable: {exc})"
    return "\n".join(_ANSI.sub("", text).splitlines()[-lines:])


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str], sink: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sink.append(line)
        lines.put(line)


CREATED_DATABASES: dict[str, str] = {}
"""URL by name of each database an `imagegen_up` stack used (all the tests' own); dropped
when the session ends (the stacks of a restart test share one, so not when one stops)."""


def drop_created_databases() -> None:
    """Drop them from a shared server (an embedded one went with its stack's folder)."""
    for name, url in sorted(CREATED_DATABASES.items()):
        with contextlib.suppress(OSError, TimeoutError):
            drop_database(url, name)
    CREATED_DATABASES.clear()


@contextmanager
def imagegen_up(
    tmp: Path,
    extra_args: list[str],
    env: Mapping[str, str] | None = None,
    database: str | None = None,
) -> Iterator[RunningStack]:
    """`imagegen up` on fresh ports; the same `tmp` and `database` restart an earlier stack."""
    database = database or f"e2e_{uuid.uuid4().hex[:8]}"
    gateway_port, kafka_port, s3_port = free_port(), free_port(), free_port()
    analytics_port = free_port()
    data_dir = tmp / "data"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imagegen.cli",
            "up",
            "--data-dir",
            str(data_dir),
            "--gateway-port",
            str(gateway_port),
            "--analytics-port",
            str(analytics_port),
            "--kafka-port",
            str(kafka_port),
            "--s3-port",
            str(s3_port),
            "--database",
            database,
            *extra_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []
    threading.Thread(target=_pump, args=(proc, lines, output), daemon=True).start()
    found: dict[str, str] = {}
    deadline = time.monotonic() + 180
    try:
        while "token" not in found:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError("stack did not come up:\n" + "".join(output))
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            for key in ("gateway", "token", "database"):
                if line.startswith(f"{key}: "):
                    found[key] = line.split(": ", 1)[1].strip()
        CREATED_DATABASES[database] = found["database"]
        yield RunningStack(
            proc,
            data_dir,
            found["gateway"],
            found["token"],
            found["database"],
            s3_port,
            output,
            kafka_port,
            f"http://127.0.0.1:{analytics_port}",
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise


def wait_for_job(
    stack: RunningStack,
    client: httpx.Client,
    job_id: str,
    timeout: float = 180,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/generate/{job_id}").raise_for_status().json()
        if job["status"] in ("completed", "partially_completed", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished in {timeout}s:\n" + stack.log_tails())


def read_sse(
    client: httpx.Client,
    path: str,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
    *,
    stall_s: float | None = None,
    diagnose: Callable[[list[dict[str, Any]]], str] | None = None,
    queue_status: bool = False,
) -> list[dict[str, Any]]:
    """SSE messages (id, event, data) until the server ends the stream or `stop_after`.

    A job's `queue_status` messages (its place in the queue, no id: nothing to resume from)
    are left out unless `queue_status`, so that counts and ids are the job's events.

    With `stall_s`, a stream that brings no message for that long fails (heartbeats do not
    count) with what it got and `diagnose(messages)`, rather than waiting for pytest's
    timeout: a slow machine gets as long as events keep coming.
    """
    messages: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    last = time.monotonic()

    def stalled(why: str) -> AssertionError:
        got = "no message yet"
        if messages:
            last_one = messages[-1]
            got = f"{len(messages)} messages, the last {last_one['event']} id {last_one['id']}"
        return AssertionError(f"{path}: {why} ({got})\n" + (diagnose(messages) if diagnose else ""))

    # Heartbeats arrive every sse_ping_s: a read that waits longer than the stall for a
    # line means the server itself went quiet.
    timeout = httpx.Timeout(30, read=stall_s or 120)
    with client.stream("GET", path, headers=headers, timeout=timeout) as response:
        response.raise_for_status()
        lines = response.iter_lines()
        while True:
            try:
                line = next(lines)
            except StopIteration:
                break
            except httpx.ReadTimeout as exc:
                if stall_s is None:
                    raise
                raise stalled(f"not even a heartbeat for {stall_s:.0f}s") from exc
            if stall_s is not None and time.monotonic() - last > stall_s:
                raise stalled(f"no event for {stall_s:.0f}s")
            if not line:
                if "data" in current and (queue_status or current.get("event") != "queue_status"):
                    messages.append(current)
                    last = time.monotonic()
                    if stop_after is not None and len(messages) >= stop_after:
                        break
                current = {}
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                current["data"] = json.loads(value)
            elif name in ("id", "event"):
                current[name] = value
    return messages
