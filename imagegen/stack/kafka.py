"""Apache Kafka (KRaft, one combined broker + controller) as a child process.

The broker's jars come from Maven Central once (`mvn dependency:copy-dependencies` on a
generated pom) into a cache outside the repository, and every later start reuses them.
The tests, the benchmarks and `imagegen up` all start it through `ApacheKafka`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imagegen.stack import StackError
from imagegen.stack.ports import LOOPBACK, free_port
from imagegen.stack.process import ServerProcess

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
MIN_JAVA = 17

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>imagegen.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <!-- Kafka logs through SLF4J 1.x; without a binding it logs nothing at all. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

# Kafka's own chatter at INFO is ~1,000 lines a start; warnings and errors are what a
# failing test needs, plus the one line that says the broker is up.
_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""

# Settings that make a one-node broker quick to start and light on a small machine;
# replication factors of 1 because there is one node.
SINGLE_NODE_PROPERTIES: Mapping[str, str] = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "8",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "share.coordinator.state.topic.num.partitions": "1",
    "group.initial.rebalance.delay.ms": "0",
    # Topics come from the registry with their partitions and configs, never from first use.
    "auto.create.topics.enable": "false",
    # Threads that wake on their own at rest. Each network thread polls its selector every
    # 300 ms and each request handler its queue as often, and the controller's listener runs
    # a second set of both (its handler pool is `num.io.threads` too): 2 + 4 of each were
    # ~0.004 cores of an idle broker, all of them waking whether there was work or not. One
    # node serving one local stack (a few hundred requests a second at most) needs one
    # network thread and two handlers; the group coordinator's event processors (4 by
    # default) likewise one.
    "num.network.threads": "1",
    "num.io.threads": "2",
    "group.coordinator.threads": "1",
    # Not `broker.heartbeat.interval.ms`: the broker half heartbeats to the controller half
    # of the same process every 2 s, and a longer session to cover longer heartbeats holds
    # up a restart. A combined node started again after a SIGKILL cannot register until
    # its old session runs out (the restarted controller gives every registered broker a
    # fresh one): ready 13.1 s after the kill with the default 9 s session, 23.1 s with a
    # 20 s session for 5 s heartbeats.
    "background.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
    "log.cleaner.threads": "1",
    "log.index.size.max.bytes": "1048576",
    # Idle work of a broker at rest. The active controller appends a no-op record to the
    # metadata log every 500 ms by default, so that other controllers and brokers can tell
    # it is alive and caught up (KIP-835); one combined node has nobody to tell, and the
    # appends were about a third of an idle broker's CPU.
    "metadata.max.idle.interval.ms": "0",
    # The group coordinator holds each offset commit (and group change) up to this long to
    # write it with others, on a timer - which the broker's timer slack below makes up to
    # 200 ms later. A local broker's commits are a few a second: each is written at once
    # (a synchronous commit: 24 -> 2.7 ms p50 at 20 ms of slack, bench/kafka_slack.py).
    "group.coordinator.append.linger.ms": "0",
}


# Timer slack of the broker's process (see imagegen.stack.process.timer_slack): the kernel
# may fire each of its threads' timers up to this late. At rest the broker is mostly timers:
# a dozen purgatory reapers tick every 200 ms and the request threads poll their queues
# every 300 ms, whether there is work or not, and two threads tick ~200 metrics meters
# each 5 s apart. With 200 ms those ticks come about half as often, and timers falling due
# close together are served in one wake-up: the idle broker with 12 consumers fetching
# 15.5 -> 8-11 ms of CPU a second (156 -> 110 wake-ups) against 20 ms (bench/kafka_slack.py).
# A record never waits for it: produce, the delayed fetch it completes and the fetch's reply
# are woken by I/O (a hop's p50 3.4-4.3 ms either way); what does wait are timeouts (a
# long-poll fetch that finds nothing ends up to 200 ms later) and the group coordinator's
# append linger, which SINGLE_NODE_PROPERTIES turns off. 500 ms made some produce requests
# wait ~425 ms. `IMAGEGEN_KAFKA_TIMER_SLACK_MS` overrides it (0: the system's 50 us).
KAFKA_TIMER_SLACK_MS = 200


def kafka_timer_slack_ns() -> int | None:
    """The broker's timer slack in ns; None for the system's default."""
    raw = os.environ.get("IMAGEGEN_KAFKA_TIMER_SLACK_MS", "").strip()
    try:
        ms = float(raw) if raw else KAFKA_TIMER_SLACK_MS
    except ValueError:
        raise StackError(
            f"IMAGEGEN_KAFKA_TIMER_SLACK_MS must be a number of milliseconds, not {raw!r}"
        ) from None
    if ms < 0:
        raise StackError(f"IMAGEGEN_KAFKA_TIMER_SLACK_MS must be 0 or more, not {raw!r}")
    return int(ms * 1_000_000) or None


def cache_dir() -> Path:
    """Where the broker's jars are kept: `IMAGEGEN_CACHE_DIR`, else ~/.cache/imagegen."""
    root = os.environ.get("IMAGEGEN_CACHE_DIR") or Path.home() / ".cache" / "imagegen"
    return Path(root) / f"kafka-{KAFKA_VERSION}"


def java_binary() -> Path:
    """A `java` of version 17 or newer: $JAVA_HOME's, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    if candidate is None or not candidate.is_file():
        found = shutil.which("java")
        if found is None:
            raise StackError(
                f"Apache Kafka needs Java {MIN_JAVA}+, and no `java` is on PATH or in "
                "JAVA_HOME (install OpenJDK 17, or pass --broker tansu)"
            )
        candidate = Path(found)
    out = subprocess.run(
        [str(candidate), "-version"], capture_output=True, text=True, timeout=30, check=False
    )
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = int(match.group(1)) if match else 0
    if match and major == 1 and match.group(2):  # "1.8.0" is Java 8
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise StackError(
            f"Apache Kafka needs Java {MIN_JAVA}+, but {candidate} is Java {major or '?'} "
            "(install OpenJDK 17, set JAVA_HOME, or pass --broker tansu)"
        )
    return candidate


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (two processes resolving the jars at once wait in turn)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def kafka_jars(cache: Path | None = None) -> Path:
    """The folder of the broker's runtime jars, resolved with Maven on first use."""
    cache = cache or cache_dir()
    jars = cache / "jars"
    done = cache / "jars.complete"
    if done.exists():
        return jars
    with _locked(cache / "jars.lock"):
        if done.exists():
            return jars
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError(
                f"Maven (`mvn`) is not on PATH: it fetches Apache Kafka {KAFKA_VERSION}'s jars "
                f"once into {jars} (install maven, or pass --broker tansu)"
            )
        with tempfile.TemporaryDirectory(prefix="kafka-pom-") as work:
            pom = Path(work) / "pom.xml"
            pom.write_text(_POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
            staged = Path(work) / "jars"
            result = subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={staged}",
                    "-DincludeScope=runtime",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if result.returncode != 0 or not any(staged.glob("kafka_2.13-*.jar")):
                tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
                raise StackError(
                    f"Maven could not fetch Apache Kafka {KAFKA_VERSION}'s jars (is the Maven "
                    f"repository reachable?): mvn exited {result.returncode}\n{tail}"
                )
            shutil.rmtree(jars, ignore_errors=True)
            shutil.move(str(staged), jars)
        done.touch()
    return jars


@dataclass(frozen=True)
class Listener:
    """An extra listener: its name, security protocol and loopback port."""

    name: str
    protocol: str
    port: int

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"


def _properties_text(props: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in props.items())


class ApacheKafka(ServerProcess):
    """One KRaft node (broker + controller) keeping its log under `data_dir/log`.

    Started again on the same `data_dir` it recovers its log: what it acknowledged before a
    SIGKILL is still there (the page cache holds it; Kafka does not fsync by default).
    """

    name = "Apache Kafka"
    port_flag = "--kafka-port"
    start_timeout = 120.0
    stop_timeout = 20.0

    def __init__(
        self,
        port: int,
        data_dir: Path,
        *,
        log_dir: Path | None = None,
        listeners: Sequence[Listener] = (),
        properties: Mapping[str, str] | None = None,
        heap_mb: int = 512,
    ) -> None:
        super().__init__(port, Path(log_dir or data_dir))
        self.data_dir = Path(data_dir)
        self.listeners = list(listeners)
        self.properties = dict(properties or {})
        self.heap_mb = heap_mb
        self.timer_slack_ns = kafka_timer_slack_ns()

    @property
    def bootstrap(self) -> str:
        """The PLAINTEXT listener every local client uses."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "log"

    def server_properties(self, controller_port: int) -> dict[str, str]:
        listeners = [f"PLAINTEXT://{self.bootstrap}", f"CONTROLLER://{LOOPBACK}:{controller_port}"]
        advertised = [f"PLAINTEXT://{self.bootstrap}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        for extra in self.listeners:
            listeners.append(f"{extra.name}://{extra.address}")
            advertised.append(f"{extra.name}://{extra.address}")
            protocols.append(f"{extra.name}:{extra.protocol}")
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            # Static voters: the formatted log does not record the controller's port, so a
            # restart may take another free one.
            "controller.quorum.voters": f"1@{LOOPBACK}:{controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "listener.security.protocol.map": ",".join(protocols),
            "log.dirs": str(self.log_dirs),
            **SINGLE_NODE_PROPERTIES,
        }
        props.update(self.properties)
        return props

    def _java(self, java: Path, jars: Path, *args: str) -> list[str]:
        log4j = self.data_dir / "config" / "log4j2.properties"
        young_mb = min(128, self.heap_mb // 4)
        jvm = [
            str(java),
            f"-Xmx{self.heap_mb}m",
            # A young generation of 128 MB from the start (it began at ~21 MB and grew only
            # slowly): every young collection is a pause on the VM thread whose cost goes
            # with what survives, not with the young generation's size, so fewer of them
            # cost less. At a 1 image/s trickle: VM thread 3.2 -> 0.7 ms a second, the
            # broker 30.5 -> 24.9 (bench/trickle_threads.py, 150 s warm-up).
            f"-Xms{min(self.heap_mb, young_mb + 64)}m",
            f"-Xmn{young_mb}m",
            "-XX:+UseSerialGC",
            # No hsperfdata file: its sampler wakes 20 times a second (jps/jstat go blind).
            "-XX:-UsePerfData",
            # The quick JIT tier only. A local broker's load comes in minutes-long runs, and
            # C2 kept compiling through them: at 1 image/s its compiler threads were half of
            # the broker's CPU per image (28-45 ms), in a 120-image burst 15 ms, more than
            # C1's slower code costs (request threads 12.7 -> 17.7 ms per image in the
            # burst, no change at 1/s); it also starts ~1/3 faster (bench/broker_cpu.py).
            "-XX:TieredStopAtLevel=1",
            # The monitor deflation thread looks for idle monitors every 250 ms by default
            # (4 wake-ups a second at rest); a broker's monitors are few and long-lived.
            "-XX:+UnlockDiagnosticVMOptions",
            "-XX:AsyncDeflationInterval=2000",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
        ]
        return [*jvm, "-cp", f"{jars}/*", *args]

    def command(self) -> Sequence[str]:
        java = java_binary()
        jars = kafka_jars()
        config = self.data_dir / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "log4j2.properties").write_text(_LOG4J2)
        props_file = config / "server.properties"
        props_file.write_text(_properties_text(self.server_properties(free_port())))
        if not (self.log_dirs / "meta.properties").exists():
            self._format(java, jars, props_file)
        return self._java(java, jars, "kafka.Kafka", str(props_file))

    def _format(self, java: Path, jars: Path, props_file: Path) -> None:
        cluster_id = _cluster_id()
        cmd = self._java(
            java, jars, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props_file)
        )
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise StackError(
                f"formatting Kafka's log dir {self.log_dirs} failed (exit {result.returncode}): "
                + (result.stdout + result.stderr).strip()[-2000:]
            )

    def wait_ready(self) -> None:
        super().wait_ready()
        wait_for_kafka(self.bootstrap, self.start_timeout, self, name=self.name)


def _cluster_id() -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64 without padding, as Kafka's own.

    Never one that starts with "-": the storage tool would read it as an option (Kafka's
    own generator skips those too). One in 64 did, and failed the stack's start."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def wait_for_kafka(
    bootstrap: str,
    timeout: float,
    server: ServerProcess | None = None,
    *,
    name: str = "Kafka broker",
    config: Mapping[str, str | int | float] | None = None,
) -> None:
    """Block until the broker answers a metadata request and lists itself as a live broker."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, **(config or {})})
    deadline = time.monotonic() + timeout
    last: object = "no answer yet"
    while True:
        if server is not None and not server.running:
            raise StackError(f"{name} exited during start-up{server.log_tail()}")
        try:
            metadata = admin.list_topics(timeout=2)
            if metadata.brokers:
                return
            last = "no broker registered yet"
        except KafkaException as exc:
            last = exc
        if time.monotonic() >= deadline:
            tail = server.log_tail() if server is not None else ""
            raise StackError(f"{name} at {bootstrap} not ready within {timeout:.0f}s: {last}{tail}")
        time.sleep(0.2)


def delete_topics(bootstrap: str, names: Sequence[str], timeout: float = 30.0) -> None:
    """Delete topics (a test's namespace), ignoring those already gone."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    if not names:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for name, future in admin.delete_topics(list(names), operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise StackError(f"cannot delete topic {name} on {bootstrap}: {err}") from err
