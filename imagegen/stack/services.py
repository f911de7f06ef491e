"""The services as supervised child processes: restarted if they die, stopped in order."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

SERVICES = ("storage", "postprocess", "generator", "scheduler", "gateway")
STABLE_AFTER_S = 30.0
"""A service that ran this long before it died is restarted at once (its crash streak
ends); one that keeps dying sooner waits longer each time, up to `MAX_BACKOFF_S`."""
MAX_BACKOFF_S = 8.0


class ServiceProcess:
    """One `python -m services.<name>` child with its own log file."""

    def __init__(self, name: str, env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = dict(env)
        self.log_file = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.streak = 0
        """Deaths in a row, each within `STABLE_AFTER_S` of its start."""
        self.started_at = 0.0
        self.restart_at: float | None = None
        """When a dead service is due to start again (None while it runs)."""

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.restart_at = None
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("event=service_kill name=%s reason=drain_timeout", self.name)
            self.proc.kill()
            self.proc.wait(5)


_POLL_S = 0.25
"""How often the watcher looks at the services where it cannot wait on their exits."""


def _exit_fds(running: list[ServiceProcess]) -> list[int] | None:
    """One pidfd per running service, readable once it exits; None where the watcher cannot
    wait on exits (no pidfds here, or a service reaped meanwhile): it polls instead."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    fds: list[int] = []
    try:
        for service in running:
            assert service.proc is not None
            fds.append(pidfd_open(service.proc.pid))
            if service.proc.returncode is not None:  # reaped meanwhile: the pid is not its own
                raise ProcessLookupError(service.proc.pid)
    except OSError:
        for fd in fds:
            os.close(fd)
        return None
    return fds


def backoff_s(streak: int) -> float:
    """The wait before a restart: 0.5 s after a service that ran a while, doubling for each
    quick death in a row, never more than `MAX_BACKOFF_S`."""
    return min(0.5 * 2.0 ** min(streak, 5), MAX_BACKOFF_S)


def member_env(service: str, replica: int = 0) -> dict[str, str]:
    """The process's stable name for static Kafka group membership, `<service>-<replica>`
    (one process per service here), so that a restarted service takes its partitions back
    at once (imagegen/kafka/membership.py). An IMAGEGEN_KAFKA_INSTANCE_ID in the
    environment is used as it is: set empty, it turns static membership off."""
    chosen = os.environ.get("IMAGEGEN_KAFKA_INSTANCE_ID")
    return {"IMAGEGEN_KAFKA_INSTANCE_ID": f"{service}-{replica}" if chosen is None else chosen}


class Supervisor:
    """Keeps every service running; writes their PIDs to a file operators and tests can read."""

    def __init__(
        self,
        envs: Mapping[str, Mapping[str, str]],
        log_dir: Path,
        pid_file: Path,
        *,
        restart: bool = True,
    ) -> None:
        self.services = {
            name: ServiceProcess(name, {**member_env(name), **envs[name]}, log_dir) for name in envs
        }
        self._pid_file = pid_file
        self._restart = restart
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._lock = threading.Lock()
        self._wake: tuple[int, int] | None = None
        """A pipe whose read end `stop()` makes readable, to end the watcher's wait."""

    def start(self) -> None:
        for service in self.services.values():
            service.start()
        self._write_pids()
        self._wake = os.pipe()
        self._thread.start()

    def _write_pids(self) -> None:
        pids = {n: s.proc.pid for n, s in self.services.items() if s.proc is not None}
        tmp = self._pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(pids))
        tmp.replace(self._pid_file)

    def _watch(self) -> None:
        """Sleeps until a service exits, a restart falls due or `stop()` wakes it.

        A running service is waited on through a pidfd (readable once the process exits),
        so a death is seen at once and an idle stack costs no wake-ups here (this was a
        0.25 s poll: four wakes a second for as long as the stack ran). Without pidfds
        (not Linux) it falls back to that poll."""
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                for service in self.services.values():
                    if not service.alive:
                        self._revive(service, time.monotonic())
                due = [s.restart_at for s in self.services.values() if s.restart_at is not None]
                exits = _exit_fds([s for s in self.services.values() if s.alive])
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            if timeout == float("inf"):  # down for good (restart off): nothing falls due
                timeout = None
            if exits is None:
                timeout = _POLL_S if timeout is None else min(timeout, _POLL_S)
            assert self._wake is not None
            try:
                select.select([self._wake[0], *(exits or [])], [], [], timeout)
            finally:
                for fd in exits or []:
                    os.close(fd)

    def _revive(self, service: ServiceProcess, now: float) -> None:
        """Schedule a dead service's restart (backing off while it keeps crashing), or
        restart it once due; each service on its own clock, none waits for another."""
        if service.restart_at is None:
            code = service.proc.returncode if service.proc else None
            print(f"service {service.name} exited (code {code})", flush=True)
            if not self._restart:
                service.restart_at = float("inf")
                return
            lived = now - service.started_at
            service.streak = 0 if lived >= STABLE_AFTER_S else service.streak + 1
            service.restart_at = now + backoff_s(service.streak)
        if now < service.restart_at:
            return
        service.restarts += 1
        service.start()
        self._write_pids()
        print(f"service {service.name} restarted", flush=True)

    def dead(self) -> list[str]:
        return [n for n, s in self.services.items() if not s.alive]

    def stop(self, timeout: float = 20.0) -> None:
        """Gateway first (no new work), then the workers; each drains its in-flight message."""
        self._stopping.set()
        if self._wake is not None:
            os.write(self._wake[1], b"x")
            self._thread.join(5.0)
            if not self._thread.is_alive():
                for fd in self._wake:
                    os.close(fd)
                self._wake = None
        # Others (the analytics consumer) after the five, so they see the last events.
        order = [n for n in reversed(SERVICES) if n in self.services]
        order += [n for n in self.services if n not in SERVICES]
        with self._lock:
            for name in order:
                self.services[name].terminate()
            for name in order:
                self.services[name].wait(timeout)
        self._pid_file.unlink(missing_ok=True)
