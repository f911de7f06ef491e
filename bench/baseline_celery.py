"""The baseline for bench/orchestration.py: the seed's stack, a FastAPI app + Celery on Redis.

The same hops as imagegen with the instant backend, done the usual Celery way:

    POST /generate (bearer JWT, character row read, job row written, task enqueued)
      -> schedule (job row updated, `generation_queued` published)
      -> generate (the same InstantBackend; PNG passed on in the task message, base64)
      -> postprocess (the same `render` as the postprocess service, same settings)
      -> store (original + renditions put to SeaweedFS, image row inserted, job completed,
                `image_stored` published)
    GET /events: Server-Sent Events relayed from the user's Redis pub/sub channel.

One Celery worker (prefork) runs every task, one uvicorn process the app; Redis keeps an
append-only file (fsync every second), the common production setting. Started by
`baseline_stack()`; `python -m celery -A baseline_celery worker` and
`uvicorn --factory baseline_celery:create_app` load this module in those processes.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery
from pydantic import BaseModel

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Imported before the prefork pool forks, as a Celery project does with its task modules.
from services.generator.backends.base import CancelToken, GenerationRequest  # noqa: E402
from services.generator.backends.instant import InstantBackend  # noqa: E402
from services.postprocess.renditions import render  # noqa: E402
from services.postprocess.settings import PostprocessSettings  # noqa: E402

app = Celery("baseline", broker=os.environ.get("BASELINE_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS baseline;
CREATE TABLE IF NOT EXISTS baseline.characters (
    id text PRIMARY KEY, user_id text NOT NULL, name text NOT NULL);
CREATE TABLE IF NOT EXISTS baseline.jobs (
    id text PRIMARY KEY, user_id text NOT NULL, character_id text NOT NULL,
    status text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS baseline.images (
    id text PRIMARY KEY, job_id text NOT NULL, user_id text NOT NULL,
    keys jsonb NOT NULL, width int NOT NULL, height int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
"""


# --- worker side: one database connection, S3 client and Redis client per process --------


class _Clients:
    """Opened on first use in each worker process (prefork children must not share them)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.conn: Any = None
        self.s3: Any = None
        self.redis: Any = None

    def db(self, sql: str, *args: Any) -> None:
        import asyncpg

        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        if self.conn is None:
            self.conn = self.loop.run_until_complete(asyncpg.connect(os.environ["BASELINE_DSN"]))
        self.loop.run_until_complete(self.conn.execute(sql, *args))

    def put(self, key: str, body: bytes, content_type: str) -> None:
        if self.s3 is None:
            import boto3  # type: ignore[import-untyped]

            self.s3 = boto3.client(
                "s3",
                endpoint_url=os.environ["BASELINE_S3_ENDPOINT"],
                aws_access_key_id=os.environ["BASELINE_S3_ACCESS_KEY"],
                aws_secret_access_key=os.environ["BASELINE_S3_SECRET_KEY"],
                region_name="us-east-1",
            )
        self.s3.put_object(
            Bucket=os.environ["BASELINE_S3_BUCKET"], Key=key, Body=body, ContentType=content_type
        )

    def publish(self, user_id: str, job_id: str, event_type: str, **data: Any) -> None:
        if self.redis is None:
            import redis

            self.redis = redis.Redis.from_url(os.environ["BASELINE_REDIS_URL"])
        event = {
            "id": str(uuid.uuid4()),
            "type": event_type,
            "job_id": job_id,
            "user_id": user_id,
            "time": datetime.now(UTC).isoformat(),
            "data": data,
        }
        self.redis.publish(f"events:{user_id}", json.dumps(event))


_clients = _Clients()


@functools.cache
def _postprocess_settings() -> PostprocessSettings:
    return PostprocessSettings()


def schedule(job: dict[str, Any]) -> None:
    _clients.db("UPDATE baseline.jobs SET status = 'queued' WHERE id = $1", job["job_id"])
    _clients.publish(job["user_id"], job["job_id"], "generation_queued")
    _enqueue("generate", job)


def generate(job: dict[str, Any]) -> None:
    _clients.publish(job["user_id"], job["job_id"], "generation_started")
    request = GenerationRequest(
        prompt=job["prompt"],
        negative_prompt="",
        seed=job["seed"],
        width=job["width"],
        height=job["height"],
        steps=1,
        guidance=0.0,
        identity_seed=job["seed"],
    )
    image = InstantBackend().generate(request, lambda step, total: None, CancelToken())
    _clients.publish(job["user_id"], job["job_id"], "generation_completed")
    _enqueue("postprocess", job, base64.b64encode(image.png).decode())


def postprocess(job: dict[str, Any], png_b64: str) -> None:
    settings = _postprocess_settings()
    rendered = render(
        base64.b64decode(png_b64),
        display_quality=settings.display_quality,
        display_max_bytes=settings.display_max_bytes,
        thumbnail_size=settings.thumbnail_size,
    )
    items = [{"name": "original", "format": "png", "content_type": "image/png", "data": png_b64}]
    items += [
        {
            "name": r.name,
            "format": r.format,
            "content_type": r.content_type,
            "data": base64.b64encode(r.data).decode(),
        }
        for r in rendered
    ]
    _enqueue("store", job, items)


def store(job: dict[str, Any], items: list[dict[str, str]]) -> None:
    prefix = f"baseline/{job['user_id']}/{job['job_id']}"
    keys = {}
    for item in items:
        key = f"{prefix}/{item['name']}.{item['format']}"
        _clients.put(key, base64.b64decode(item["data"]), item["content_type"])
        keys[item["name"]] = key
    image_id = f"{job['job_id']}-0"
    _clients.db(
        "INSERT INTO baseline.images (id, job_id, user_id, keys, width, height)"
        " VALUES ($1, $2, $3, $4::jsonb, $5, $6) ON CONFLICT (id) DO NOTHING",
        image_id,
        job["job_id"],
        job["user_id"],
        json.dumps(keys),
        job["width"],
        job["height"],
    )
    _clients.db("UPDATE baseline.jobs SET status = 'completed' WHERE id = $1", job["job_id"])
    _clients.publish(job["user_id"], job["job_id"], "image_stored", image_id=image_id)


def _enqueue(task: str, *args: Any) -> None:
    app.send_task(f"baseline.{task}", args=args)


for _task in (schedule, generate, postprocess, store):
    app.task(name=f"baseline.{_task.__name__}")(_task)


# --- the gateway-like app -----------------------------------------------------------------


class GenerateBody(BaseModel):
    character_id: str
    image_count: int = 1


def create_app() -> Any:
    """The FastAPI app (uvicorn --factory); settings from BASELINE_* variables."""
    import asyncpg
    import jwt
    import redis.asyncio as aioredis
    from fastapi import FastAPI, Header, HTTPException
    from sse_starlette import EventSourceResponse

    secret = os.environ["BASELINE_JWT_SECRET"]
    size = int(os.environ.get("BASELINE_IMAGE_SIZE", "768"))
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(os.environ["BASELINE_DSN"], max_size=10)
        state["redis"] = aioredis.Redis.from_url(os.environ["BASELINE_REDIS_URL"])
        yield
        await state["pool"].close()
        await state["redis"].aclose()

    api = FastAPI(lifespan=lifespan)

    def user_of(authorization: str | None) -> str:
        try:
            claims = jwt.decode(
                (authorization or "").removeprefix("Bearer "), secret, algorithms=["HS256"]
            )
        except jwt.PyJWTError as exc:
            raise HTTPException(401, "bad token") from exc
        return str(claims["sub"])

    @api.post("/generate", status_code=202)
    async def post_generate(
        body: GenerateBody, authorization: str | None = Header(default=None)
    ) -> dict[str, str]:
        user = user_of(authorization)
        job_id = str(uuid.uuid4())
        async with state["pool"].acquire() as conn:
            found = await conn.fetchval(
                "SELECT name FROM baseline.characters WHERE id = $1 AND user_id = $2",
                body.character_id,
                user,
            )
            if found is None:
                raise HTTPException(404, "character not found")
            await conn.execute(
                "INSERT INTO baseline.jobs (id, user_id, character_id, status)"
                " VALUES ($1, $2, $3, 'accepted')",
                job_id,
                user,
                body.character_id,
            )
        job = {
            "job_id": job_id,
            "user_id": user,
            "prompt": f"a portrait of {found}",
            "seed": uuid.UUID(job_id).int % 1_000_000,
            "width": size,
            "height": size,
        }
        await asyncio.to_thread(_enqueue, "schedule", job)
        return {"job_id": job_id, "status": "accepted"}

    @api.post("/characters", status_code=201)
    async def post_character(authorization: str | None = Header(default=None)) -> dict[str, str]:
        user = user_of(authorization)
        character_id = str(uuid.uuid4())
        await state["pool"].execute(
            "INSERT INTO baseline.characters (id, user_id, name) VALUES ($1, $2, 'Mira')",
            character_id,
            user,
        )
        return {"id": character_id}

    @api.get("/events")
    async def events(authorization: str | None = Header(default=None)) -> EventSourceResponse:
        user = user_of(authorization)
        pubsub = state["redis"].pubsub()
        await pubsub.subscribe(f"events:{user}")

        async def relay() -> AsyncIterator[dict[str, str]]:
            try:
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        text = message["data"].decode()
                        event = json.loads(text)
                        yield {"event": event["type"], "id": event["id"], "data": text}
            finally:
                await pubsub.aclose()

        return EventSourceResponse(relay(), ping=15)

    return api


# --- starting it all -----------------------------------------------------------------------


@dataclass
class Baseline:
    url: str
    jwt_secret: str
    database: str = ""
    redis_port: int = 0

    def token(self, user: str) -> str:
        import jwt

        claims = {"sub": user, "tier": "paid", "exp": int(time.time()) + 24 * 3600}
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256")


def _redis_server() -> str:
    """Debian's `redis-server`, installed with apt-get when missing (no machine here has one
    before a session); its package's own service is stopped: the benchmark runs its own."""
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if Path(found).exists():
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise RuntimeError("redis-server not found: apt-get install redis-server (as root)")
    print("installing redis-server with apt-get (once)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", "redis-server"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run([apt, "update", "-q"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    # Where the package started its own server (sysvinit scripts), stop it: an idle Redis
    # beside the measured one would only add noise.
    service = shutil.which("service")
    if service is not None:
        subprocess.run(
            [service, "redis-server", "stop"], capture_output=True, check=False, timeout=30
        )
    if not Path(found).exists():
        raise RuntimeError("redis-server still missing after apt-get install")
    return found


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not answering after {timeout}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def baseline_stack(
    workdir: Path,
    *,
    concurrency: int = 4,
    image_size: int = 768,
    pg_dsn_base: str = "postgresql://postgres@127.0.0.1:5432/postgres",
    s3_front: Callable[[int], str] | None = None,
) -> Iterator[Baseline]:
    """Redis, SeaweedFS, a PostgreSQL database (a new one on the server at `pg_dsn_base`),
    the Celery worker and the app, on free ports. `s3_front`: given SeaweedFS's S3 port,
    the endpoint the baseline uses instead (a counting proxy)."""
    import asyncpg
    from _common import drop_database, free_port

    from imagegen.stack.postgres import dsn_for
    from imagegen.stack.servers import SeaweedFS

    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    database = f"bench_celery_{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        redis_port = free_port()
        (workdir / "redis").mkdir(exist_ok=True)
        redis_proc = subprocess.Popen(
            [
                _redis_server(),
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(workdir / "redis"),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ],
            stdout=(logs / "redis.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        stack.callback(_stop, redis_proc)
        s3 = stack.enter_context(
            SeaweedFS(workdir / "s3", free_port(), "baseline", "baseline-secret", ["baseline"])
        )

        async def create() -> None:
            admin = await asyncpg.connect(dsn_for(pg_dsn_base, "postgres"))
            await admin.execute(f'CREATE DATABASE "{database}"')
            await admin.close()
            conn = await asyncpg.connect(dsn_for(pg_dsn_base, database))
            await conn.execute(SCHEMA)
            await conn.close()

        asyncio.run(create())
        stack.callback(drop_database, database, dsn_for(pg_dsn_base, "postgres"))
        secret = uuid.uuid4().hex * 2
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(BENCH), str(REPO)]),
            "BASELINE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "BASELINE_DSN": dsn_for(pg_dsn_base, database),
            "BASELINE_S3_ENDPOINT": s3_front(s3.port) if s3_front else s3.endpoint,
            "BASELINE_S3_ACCESS_KEY": "baseline",
            "BASELINE_S3_SECRET_KEY": "baseline-secret",
            "BASELINE_S3_BUCKET": "baseline",
            "BASELINE_JWT_SECRET": secret,
            "BASELINE_IMAGE_SIZE": str(image_size),
        }
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "baseline_celery",
                "worker",
                "--pool=prefork",
                f"--concurrency={concurrency}",
                f"--loglevel={os.environ.get('BASELINE_LOG_LEVEL', 'WARNING')}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=BENCH,
            env=env,
            stdout=(logs / "celery.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        stack.callback(_stop, worker)
        port = free_port()
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "baseline_celery:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=BENCH,
            env=env,
            stdout=(logs / "app.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        stack.callback(_stop, gateway)
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/docs", gateway)
        yield Baseline(url, secret, database, redis_port)
