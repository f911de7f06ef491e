"""`imagegen up`: the whole system on one machine with embedded, persistent defaults."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import httpx

from imagegen.errors import ConfigurationError
from imagegen.stack import StackError
from imagegen.stack.kafka import KAFKA_VERSION, ApacheKafka, java_binary, kafka_jars
from imagegen.stack.ports import LOOPBACK, port_in_use
from imagegen.stack.postgres import ensure_database, find_or_start_postgres
from imagegen.stack.process import ServerProcess
from imagegen.stack.s3 import expire_staging
from imagegen.stack.servers import SeaweedFS, Tansu, tansu_s3_env
from imagegen.stack.services import Supervisor
from imagegen.stack.topics import create_topics

if TYPE_CHECKING:
    from services.scheduler.catalogue import Catalogue

IMAGE_BUCKET = "imagegen"
BROKER_BUCKET = "tansu"
TANSU_FETCH_WAIT_MS = 100
"""Consumers' `fetch.wait.max.ms` on Tansu: ~40 ms a hop (p50) for ~2% of a core per idle
consumer; bench/broker_hop.py measures the trade-off."""
KAFKA_CLIENT_TIMINGS = {
    "IMAGEGEN_KAFKA_FETCH_WAIT_MAX_MS": "5000",
    "IMAGEGEN_KAFKA_SESSION_TIMEOUT_MS": "30000",
    "IMAGEGEN_KAFKA_HEARTBEAT_INTERVAL_MS": "5000",
}
LOCAL_POLL_TIMEOUT_MS = "10000"
"""Consumer loops' poll timeout here (1 s by default): each empty poll round costs a loop
turn at rest (a thread hand-off too where polls block in a thread). The Python services at
rest (perf stat per thread, 30 s, polls in threads): 0.0119 cores at 0.5-1 s, 0.0091 at
2 s, 0.0077 at 5 s. A stop no longer waits for the poll in flight (`ConsumerLoop.stop`
interrupts it: on the event loop at once, in a thread within `THREAD_POLL_S`, 2 s), so
10 s costs no stop time; at 5 s without the interrupt, a run of two e2e tests on their own
stacks took ~50 s longer (the supervisor stops the services one after another)."""
"""The local stack's consumers on Apache Kafka: an idle consumer fetches once per wait and
heartbeats every third of its session, the two requests that make most of the broker's
request work at rest; the production defaults (2 s, 6 s) are for groups of several replicas."""


@dataclass(frozen=True)
class StackOptions:
    data_dir: Path
    gateway_port: int = 8000
    analytics_port: int = 8010
    kafka_port: int = 9092
    s3_port: int = 8333
    pg_port: int = 5432
    database: str = "imagegen"
    namespace: str = "imagegen"
    backend: str = "demo"
    model: str | None = None
    restart: bool = True
    broker: str = "auto"
    """"kafka": Apache Kafka (needs Java 17+); "tansu": the no-JVM fallback; "auto": Kafka
    where a JDK 17+ is found, else Tansu."""
    broker_storage: str = "s3"
    """Tansu only: "s3" keeps its log in SeaweedFS (durable); "memory": lost on stop."""


def choose_broker(requested: str) -> tuple[str, str]:
    """The broker to run ("kafka" or "tansu") and why, for the line `imagegen up` prints.

    "auto" falls back to Tansu only for want of a JDK; a Kafka that cannot be fetched or
    started is an error, not a silent switch to another broker.
    """
    if requested == "tansu":
        return "tansu", "Tansu (--broker tansu)"
    if requested not in ("kafka", "auto"):
        raise ConfigurationError(f"--broker must be kafka, tansu or auto, not {requested!r}")
    try:
        java_binary()
    except StackError as exc:
        if requested == "kafka":
            raise
        return "tansu", f"Tansu (no-JVM fallback: {exc})"
    return "kafka", f"Apache Kafka {KAFKA_VERSION} (KRaft)"


def _client_timings(kind: str) -> dict[str, str]:
    """Consumers' fetch wait, session and heartbeats, unless the caller's environment sets
    them.

    Apache Kafka answers a waiting fetch as soon as a record arrives, so there a long wait
    only spaces out an idle consumer's fetches; what it delays is a partition handed over
    from another member of the group while a fetch is held (librdkafka has one fetch in
    flight per broker: up to about twice the wait, measured). Here every member is a static
    one (`<service>-0`) that takes its partitions back on restart, and one process runs
    each service; still, some restarted services resume about one wait later (chaos test,
    CHAOS_SEED=130323413: the Kafka part of the gateway's resume 1.0 s at a 2 s wait, 6.0 s
    at 5 s, 10.8 s at 10 s; most services ~1 s at any wait), and the generator's tier
    consumers, three members of one group, hand over while they join at start-up. 5 s
    takes most of the idle saving of 10 s (bench/lean_costs.py: the broker at rest 0.041
    cores at 2 s, 0.028 at 5 s, 0.024 at 10 s) for half the delay.

    The session outlasts a restart of the one broker (13-17 s after a SIGKILL): with a
    15 s session the members gave up on the coordinator while it was away, rejoined as new
    members on its return, and their next offset commit was fenced (librdkafka's fatal
    FENCED_INSTANCE_ID), so every service's process restarted (chaos test: first image
    stored 26-43 s after the kill). At 30 s they carry on as they were. Heartbeats stay
    every 5 s, since a heartbeat is also how a member hears of a rebalance (the generator's
    tier consumers join one another at start-up). The session also decides how long a dead
    member that never returns keeps its partitions (the supervisor restarts it, and it
    takes them back at once). Tansu holds a fetch for up to about
    half the wait even when a message arrives (500 ms cost ~100-230 ms a hop), so it keeps
    100 ms and the 6 s session its joins need.
    """
    chosen = {
        key: value
        for key in (
            "IMAGEGEN_KAFKA_FETCH_WAIT_MAX_MS",
            "IMAGEGEN_KAFKA_SESSION_TIMEOUT_MS",
            "IMAGEGEN_KAFKA_HEARTBEAT_INTERVAL_MS",
            "IMAGEGEN_KAFKA_POLL_TIMEOUT_MS",
        )
        if (value := os.environ.get(key))
    }
    poll = {"IMAGEGEN_KAFKA_POLL_TIMEOUT_MS": LOCAL_POLL_TIMEOUT_MS}
    if kind == "tansu":
        return {"IMAGEGEN_KAFKA_FETCH_WAIT_MAX_MS": str(TANSU_FETCH_WAIT_MS), **poll, **chosen}
    ours = dict(KAFKA_CLIENT_TIMINGS)
    if "IMAGEGEN_KAFKA_SESSION_TIMEOUT_MS" in chosen:
        # A session of the caller's: heartbeats at a third of it unless they chose those too
        # (ours could outlast a shorter one).
        ours.pop("IMAGEGEN_KAFKA_HEARTBEAT_INTERVAL_MS")
    return {**ours, **poll, **chosen}


def _broker_url(options: StackOptions) -> str:
    if options.broker_storage == "s3":
        return f"s3://{BROKER_BUCKET}/"
    if options.broker_storage == "memory":
        return "memory://tansu/"
    raise ConfigurationError(
        f"broker storage must be 's3' or 'memory', not {options.broker_storage!r}"
    )


@dataclass(frozen=True)
class StackSecrets:
    jwt_secret: str
    s3_access_key: str
    s3_secret_key: str

    @classmethod
    def load_or_create(cls, data_dir: Path) -> StackSecrets:
        """Kept beside the data so a restarted stack (and `imagegen token`) use the same ones."""
        path = data_dir / "secrets.json"
        if path.exists():
            return cls(**json.loads(path.read_text()))
        created = cls(
            jwt_secret=secrets.token_urlsafe(48),
            s3_access_key=f"imagegen-{secrets.token_hex(4)}",
            s3_secret_key=secrets.token_urlsafe(32),
        )
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(created.__dict__))
        path.chmod(0o600)
        return created


def _check_ports(options: StackOptions) -> None:
    for port, what, flag in (
        (options.gateway_port, "gateway", "--gateway-port"),
        (options.analytics_port, "analytics", "--analytics-port"),
        (options.kafka_port, "Kafka broker", "--kafka-port"),
        (options.s3_port, "SeaweedFS S3", "--s3-port"),
    ):
        if port_in_use(port):
            raise StackError(
                f"port {port} is already in use ({what}); pass {flag} to choose another"
            )


def _wait_ready(url: str, supervisor: Supervisor, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = supervisor.dead()
        if dead and not supervisor._restart:
            raise StackError(f"service(s) {', '.join(dead)} exited during start-up; see logs")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise StackError(f"gateway at {url} not ready after {timeout:.0f}s; see the logs folder")


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    # A second Ctrl-C must not interrupt the orderly stop that this one starts.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise _Stop(signal.Signals(signum).name)


def _catalogue(options: StackOptions) -> Catalogue:
    """The scheduler's offers: `IMAGEGEN_CATALOGUE` when the caller set one (fault tests put
    a flaky provider before the demo one), else exactly the one backend `--backend` names."""
    # The stack is the scheduler's deployer here, as it is the gateway's token client.
    from services.scheduler.catalogue import DEMO_MODEL, Catalogue, single_backend_catalogue

    explicit = os.environ.get("IMAGEGEN_CATALOGUE", "").strip()
    if explicit:
        try:
            catalogue = Catalogue.from_json(explicit)
        except ConfigurationError as exc:
            raise StackError(str(exc)) from exc
    else:
        model = DEMO_MODEL if options.backend == "demo" else (options.model or "default")
        catalogue = single_backend_catalogue(options.backend, model)
    # With an OpenAI key, dall-e-3 and gpt-image-1 are on offer (and the generator runs them).
    if os.environ.get("IMAGEGEN_OPENAI_API_KEY", "").strip():
        catalogue = catalogue.with_openai()
    return catalogue


def _generator_providers(options: StackOptions, catalogue: Catalogue) -> str:
    """Every provider the catalogue offers runs in the one local generator."""
    names = [options.backend]
    names += [o.provider for o in catalogue.offers if o.provider not in names]
    return ",".join(names)


def run_stack(options: StackOptions, *, on_ready: list[object] | None = None) -> int:
    """Start everything, print `gateway:` and `token:`, run until SIGINT/SIGTERM, stop cleanly."""
    from services.gateway.auth import issue_token  # the CLI is the gateway's dev-token client

    data = options.data_dir.resolve()
    logs = data / "logs"
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _check_ports(options)
        creds = StackSecrets.load_or_create(data)
        kind, described = choose_broker(options.broker)
        with ExitStack() as stack:
            print(f"data: {data}", flush=True)
            s3 = stack.enter_context(
                SeaweedFS(
                    data / "s3",
                    options.s3_port,
                    creds.s3_access_key,
                    creds.s3_secret_key,
                    buckets=[IMAGE_BUCKET, *([BROKER_BUCKET] if kind == "tansu" else [])],
                    log_dir=logs,
                )
            )
            expire_staging(
                s3.endpoint, IMAGE_BUCKET, creds.s3_access_key, creds.s3_secret_key, s3.region
            )
            server: ServerProcess
            if kind == "kafka":
                kafka_jars()  # the first run fetches them: say so before the wait
                server = ApacheKafka(options.kafka_port, data / "kafka", log_dir=logs)
            else:
                env_s3 = tansu_s3_env(
                    s3.endpoint, creds.s3_access_key, creds.s3_secret_key, s3.region
                )
                server = Tansu(options.kafka_port, _broker_url(options), env=env_s3, log_dir=logs)
            broker = stack.enter_context(server)
            bootstrap = f"{LOOPBACK}:{broker.port}"
            print(f"broker: {described} at {bootstrap}", flush=True)
            dsn_base, pg = find_or_start_postgres(data / "pg", port=options.pg_port)
            if pg is not None:
                stack.callback(pg.stop)
            database_url = ensure_database(dsn_base, options.database)
            print(f"database: {database_url}", flush=True)
            create_topics(bootstrap, options.namespace)
            gateway_url = f"http://{LOOPBACK}:{options.gateway_port}"
            common = {
                "IMAGEGEN_ENV": "dev",
                "IMAGEGEN_DATABASE_URL": database_url,
                "IMAGEGEN_KAFKA_BOOTSTRAP": bootstrap,
                "IMAGEGEN_KAFKA_NAMESPACE": options.namespace,
                **_client_timings(kind),
                "IMAGEGEN_S3_ENDPOINT": s3.endpoint,
                "IMAGEGEN_S3_BUCKET": IMAGE_BUCKET,
                "IMAGEGEN_S3_REGION": s3.region,
                "IMAGEGEN_S3_ACCESS_KEY": creds.s3_access_key,
                "IMAGEGEN_S3_SECRET_KEY": creds.s3_secret_key,
                "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
            }
            catalogue = _catalogue(options)
            envs = {
                "storage": common,
                "postprocess": common,
                "generator": {
                    **common,
                    "IMAGEGEN_GENERATOR_BACKEND": options.backend,
                    "IMAGEGEN_GENERATOR_PROVIDERS": _generator_providers(options, catalogue),
                    **({"IMAGEGEN_GENERATOR_MODEL": options.model} if options.model else {}),
                },
                "scheduler": {**common, "IMAGEGEN_CATALOGUE": catalogue.to_json()},
                "gateway": {
                    **common,
                    "IMAGEGEN_HOST": LOOPBACK,
                    "IMAGEGEN_PORT": str(options.gateway_port),
                    "IMAGEGEN_PUBLIC_BASE_URL": gateway_url,
                    "IMAGEGEN_JWT_SECRET": creds.jwt_secret,
                    # The same offers as the scheduler's: unservable requests are 422s.
                    "IMAGEGEN_CATALOGUE": catalogue.to_json(),
                },
                "analytics": {
                    **common,
                    "IMAGEGEN_ANALYTICS_HOST": LOOPBACK,
                    "IMAGEGEN_ANALYTICS_PORT": str(options.analytics_port),
                },
            }
            supervisor = Supervisor(envs, logs, data / "services.json", restart=options.restart)
            stack.callback(supervisor.stop)
            supervisor.start()
            _wait_ready(gateway_url, supervisor, timeout=120)
            token = issue_token(creds.jwt_secret, "demo-user", "paid", ttl=7 * 24 * 3600)
            print(f"gateway: {gateway_url}", flush=True)
            print(f"token: {token}", flush=True)
            print(f"web page: {gateway_url}/?token={token}", flush=True)
            print(f"analytics: http://{LOOPBACK}:{options.analytics_port}/", flush=True)
            for hook in on_ready or []:
                hook(gateway_url, token)  # type: ignore[operator]
            print("ready; Ctrl-C stops everything", flush=True)
            while True:  # the supervisor's thread does the watching; this waits for a signal
                signal.pause()
    except _Stop as stop:
        print(f"stopping ({stop})…", flush=True)
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("stopped", flush=True)
