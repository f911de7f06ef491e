"""Shared by the benchmarks: the stack as processes, a light SSE reader, percentiles, results.

Not a test helper: nothing here asserts timings. Results go to bench/results/<name>.json
with the machine and its load average, since the numbers only mean something beside them.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# What the benchmarks change from the defaults of `imagegen up`, for both systems alike:
# a benchmark user must not hit the per-user rate limit or job-slot cap (they protect a
# shared service from one user, not what is measured here), and face-consistency scoring
# and the image-safety classifier are off (the baseline has neither; the instant backend
# draws no faces, and its solid frames marked demo would otherwise each get the
# classifier: 0.46-0.56 s of CPU per image in bench/results/safety_classifier.json).
STACK_ENV = {
    "IMAGEGEN_RATE_LIMITS": json.dumps(
        {t: {"api": 10_000_000, "generate": 10_000_000} for t in ("paid", "free")}
    ),
    "IMAGEGEN_MAX_JOBS_IN_FLIGHT_PAID": "100000",
    "IMAGEGEN_CONSISTENCY_ENABLED": "false",
    "IMAGEGEN_SAFETY_CHECK": "false",
    "IMAGEGEN_LOG_LEVEL": "WARNING",
}

_LAUNCH = """
import dataclasses, json, sys
from pathlib import Path
import imagegen.stack.local as local
options = json.loads(sys.argv[1])
options["data_dir"] = Path(options["data_dir"])
front = options.pop("s3_endpoint", None)
if front:
    # Every client of the stack's SeaweedFS (its readiness probe and bucket set-up, the
    # services) reaches it through the benchmark's counting proxy at `front`.
    class Fronted(local.SeaweedFS):
        @property
        def endpoint(self):
            return front
    local.SeaweedFS = Fronted
known = {f.name for f in dataclasses.fields(local.StackOptions)}
options = {k: v for k, v in options.items() if k in known}
sys.exit(local.run_stack(local.StackOptions(**options)))
"""


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100, linear interpolation); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def machine() -> dict[str, Any]:
    """Where and when the numbers were taken, including how busy the machine was."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": False,
        "commit": commit,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
    }


def uptime() -> str:
    """`uptime`'s line (load averages): what the machine was doing beside a measurement."""
    return subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()


def write_result(name: str, payload: dict[str, Any]) -> Path:
    payload.setdefault("machine", {})["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO)}")
    return path


def free_port() -> int:
    from imagegen.stack.ports import free_port as _free_port

    return _free_port()


@dataclass
class OurStack:
    """`imagegen up` (the five services on Apache Kafka or Tansu, PostgreSQL and SeaweedFS) as
    processes."""

    proc: subprocess.Popen[str]
    data_dir: Path
    gateway: str
    database: str
    """The stack's database URL."""
    output: list[str] = field(default_factory=list)
    bootstrap: str = ""
    """The broker's bootstrap address."""
    namespace: str = "imagegen"

    @property
    def database_name(self) -> str:
        return urlsplit(self.database).path.strip("/")

    def token(self, user: str, tier: str = "paid") -> str:
        from services.gateway.auth import issue_token

        secret = json.loads((self.data_dir / "secrets.json").read_text())["jwt_secret"]
        return issue_token(secret, user, tier, ttl=24 * 3600)

    def service_pids(self) -> dict[str, int]:
        pids: dict[str, int] = json.loads((self.data_dir / "services.json").read_text())
        return pids


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str], sink: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sink.append(line)
        lines.put(line)


@contextmanager
def our_stack(
    workdir: Path,
    backend: str = "instant",
    broker: str = "kafka",
    broker_storage: str = "s3",
    pg_port: int | None = None,
    s3_port: int | None = None,
    s3_endpoint: str | None = None,
    env: dict[str, str] | None = None,
    startup_s: float = 180.0,
) -> Iterator[OurStack]:
    """The whole stack on fresh ports with `STACK_ENV`; stopped with SIGINT, database dropped.

    `broker`: "kafka" (Apache Kafka, as `imagegen up` runs where a JDK is found) or "tansu"
    (with `broker_storage` "s3" or "memory"). `pg_port`: the PostgreSQL server to use
    (`imagegen up`'s default, 5432, else an embedded one). `s3_port`: SeaweedFS's S3 port;
    `s3_endpoint`: where the services reach it instead (a counting proxy). `env`: more
    environment for every process of the stack. `startup_s`: how long it may take to come up.
    """
    database = f"bench_{uuid.uuid4().hex[:8]}"
    options: dict[str, Any] = {
        "data_dir": str(workdir / "data"),
        "gateway_port": free_port(),
        "kafka_port": free_port(),
        "s3_port": s3_port or free_port(),
        "analytics_port": free_port(),  # where the stack runs one: never a fixed port
        "database": database,
        "backend": backend,
        "broker": broker,
        "broker_storage": broker_storage,
    }
    if pg_port is not None:
        options["pg_port"] = pg_port
    if s3_endpoint is not None:
        options["s3_endpoint"] = s3_endpoint
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, json.dumps(options)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **STACK_ENV, **(env or {})},
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []
    threading.Thread(target=_pump, args=(proc, lines, output), daemon=True).start()
    found: dict[str, str] = {}
    deadline = time.monotonic() + startup_s
    try:
        while "token" not in found:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("stack did not come up:\n" + "".join(output[-40:]))
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            for key in ("gateway", "token", "database", "broker"):
                if line.startswith(f"{key}: "):
                    found[key] = line.split(": ", 1)[1].strip()
        bootstrap = found.get("broker", "").rsplit(" at ", 1)[-1]
        yield OurStack(
            proc, workdir / "data", found["gateway"], found["database"], output, bootstrap
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
        if "database" in found:
            from imagegen.stack.postgres import dsn_for

            drop_database(database, dsn_for(found["database"], "postgres"))


_PG_BIN = "/usr/lib/postgresql/*/bin/postgres"


@contextmanager
def bench_postgres(workdir: Path) -> Iterator[int | None]:
    """A PostgreSQL server of the benchmark's own on a free loopback port (trust auth, user
    `postgres`), started as a child process so that its CPU (the postmaster and every
    backend) is measured with the system that uses it; both systems use it in turn.

    Yields its port, or None (and says so) where Debian's server binaries are missing: the
    stacks then use whatever `imagegen up` finds, which the CPU meter does not see.
    """
    import glob
    import pwd
    import tempfile

    found = sorted(glob.glob(_PG_BIN))
    if not found:
        print("note: no PostgreSQL server binaries; its CPU will not be counted")
        yield None
        return
    bindir = Path(found[-1]).parent
    ids: dict[str, Any] = {}
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        user = pwd.getpwnam("postgres")
        ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    # Not under `workdir` (private to root): a folder the postgres user can reach.
    data = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    if ids:
        os.chown(data, ids["user"], ids["group"])
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, **ids,
    )  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
         "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
         "-c", "max_connections=300"],
        stdout=(logs / "postgres.log").open("wb"), stderr=subprocess.STDOUT, **ids,
    )  # fmt: skip
    try:
        from imagegen.stack.postgres import answers_as_postgres

        deadline = time.monotonic() + 30
        while not answers_as_postgres(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start; see {logs / 'postgres.log'}")
            time.sleep(0.1)
        time.sleep(0.5)  # answering the SSL probe comes a moment before accepting logins
        yield port
    finally:
        proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        subprocess.run(["rm", "-rf", str(data)], check=False)


def drop_database(name: str, dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres") -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    try:
        asyncio.run(drop())
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"note: could not drop database {name}: {exc}")


@dataclass(frozen=True)
class SseEvent:
    id: str
    type: str
    data: dict[str, Any]
    at: float
    """time.monotonic() when the event's last line arrived."""
    wall: float
    """time.time() at the same moment (to compare with the event's own timestamp)."""


OnEvent = Callable[[SseEvent], None]


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    parts = status_line.decode("latin-1").split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers: dict[str, str] = {}
    while True:
        line = (await reader.readline()).decode("latin-1").strip()
        if not line:
            return status, headers
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()


async def _body_lines(reader: asyncio.StreamReader, chunked: bool) -> Any:
    """The body's lines, de-chunked: an async iterator of str."""
    pending = b""
    while True:
        if chunked:
            size_line = await reader.readline()
            if not size_line:
                break
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            data = await reader.readexactly(size + 2)
            pending += data[:-2]
        else:
            data = await reader.read(65536)
            if not data:
                break
            pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line.rstrip(b"\r").decode()


async def sse_follow(
    url: str,
    token: str,
    on_event: OnEvent,
    *,
    on_open: Callable[[], None] | None = None,
) -> None:
    """Read a `text/event-stream` until the server ends it or the task is cancelled.

    Raw asyncio streams instead of an HTTP client: two thousand of these must fit in one
    process on two cores beside the server they measure.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status, headers = await _read_head(reader)
        if status != 200:
            raise ConnectionError(f"GET {path}: HTTP {status}")
        if on_open is not None:
            on_open()
        chunked = "chunked" in headers.get("transfer-encoding", "")
        current: dict[str, str] = {}
        async for line in _body_lines(reader, chunked):
            if line:
                name, _, value = line.partition(":")
                if name:  # a line starting with ":" is a comment (heartbeat)
                    current[name] = value.removeprefix(" ")
                continue
            if "data" in current:
                on_event(
                    SseEvent(
                        id=current.get("id", ""),
                        type=current.get("event", "message"),
                        data=json.loads(current["data"]),
                        at=time.monotonic(),
                        wall=time.time(),
                    )
                )
            current = {}
    finally:
        writer.close()


async def character_and_stream(
    client: Any, gateway: str, token: str, on_event: OnEvent
) -> tuple[str, asyncio.Task[None]]:
    """A new character of the token's user (its id) and that user's event stream, open
    (a task running `sse_follow` on /api/v1/events); `client`: an httpx.AsyncClient on
    `gateway`."""
    response = await client.post(
        "/api/v1/characters",
        json={"name": "Mira", "attributes": {"hairColour": "red"}, "artStyle": "realistic"},
        headers={"Authorization": f"Bearer {token}"},
    )
    response.raise_for_status()
    opened = asyncio.Event()
    url = gateway + "/api/v1/events"
    stream = asyncio.create_task(sse_follow(url, token, on_event, on_open=opened.set))
    await asyncio.wait_for(opened.wait(), 60)
    return str(response.json()["id"]), stream


async def paced(
    rate: float, duration: float, fire: Callable[[int], Coroutine[Any, Any, None]]
) -> int:
    """Start `fire(i)` every 1/rate s for `duration` s (open loop: no waiting for replies)."""
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    count = int(rate * duration)
    for i in range(count):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(i)))
    await asyncio.gather(*tasks, return_exceptions=True)
    return count


def event_time(data: dict[str, Any]) -> float | None:
    """The event's own timestamp (CloudEvents `time`) as a POSIX time."""
    stamp = data.get("time")
    if not isinstance(stamp, str):
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _process_name(cmdline: list[str]) -> str:
    """A short name for a benchmark child process, from its command line."""
    text = " ".join(cmdline)
    for arg in cmdline:
        if arg.startswith("services."):
            return arg.removeprefix("services.")
    for needle, name in (
        ("kafka.Kafka", "kafka"),  # the broker's JVM (and its StorageTool runs, below)
        ("kafka.tools", "kafka"),
        ("tansu", "tansu"),
        ("weed", "seaweedfs"),
        ("redis-server", "redis"),
        ("uvicorn", "uvicorn"),
        ("celery", "celery"),
        ("run_stack", "imagegen-up"),
        ("postgres", "postgres"),
    ):
        if needle in text:
            return name
    return Path(cmdline[0]).name if cmdline else "?"


class CpuMeter:
    """CPU seconds (user + system) of this process's descendants, by name, between two
    readings: where the machine's time goes per image. A process's reaped children count
    with it (PostgreSQL's backends with the postmaster, Celery's pool with the worker).

    Also, over the same interval: this process's own CPU (the load generator and its SSE
    readers) and the whole machine's busy CPU, so `others()` tells how much of the machine
    went to work outside the benchmark (other engineers' tests on a shared machine)."""

    def __init__(self) -> None:
        import psutil  # type: ignore[import-untyped]

        self._psutil = psutil
        self._me = psutil.Process()
        self.restart()

    def _read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for child in self._me.children(recursive=True):
            try:
                times = child.cpu_times()
                name = _process_name(child.cmdline())
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
            spent = times.user + times.system + times.children_user + times.children_system
            out[name] = out.get(name, 0.0) + spent
        return out

    def _own(self) -> float:
        times = self._me.cpu_times()
        return float(times.user + times.system)

    def _machine(self) -> float:
        t = self._psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        return float(busy + getattr(t, "steal", 0.0))

    def restart(self) -> None:
        self._started = time.monotonic()
        self._start = self._read()
        self._start_own = self._own()
        self._start_machine = self._machine()

    def seconds(self) -> dict[str, float]:
        """CPU seconds per process name since the last (re)start, largest first."""
        now = self._read()
        totals = {name: max(0.0, spent - self._start.get(name, 0.0)) for name, spent in now.items()}
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def others(self) -> dict[str, float]:
        """Since the last (re)start, in cores: the machine's busy CPU, the load generator's,
        and what neither it nor the measured system used (work outside the benchmark)."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        machine = self._machine() - self._start_machine
        client = self._own() - self._start_own
        system = sum(self.seconds().values())
        return {
            "machine_busy_cores": round(machine / elapsed, 2),
            "bench_client_cores": round(client / elapsed, 2),
            "outside_work_cores": round(max(0.0, machine - client - system) / elapsed, 2),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
