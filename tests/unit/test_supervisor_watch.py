"""The supervisor's watcher waits on its children's exits: a killed service is restarted,
and at rest the watcher does not wake up (it used to poll four times a second)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagegen.stack import services as stack_services
from imagegen.stack.services import ServiceProcess, Supervisor


def _sleeper(service: ServiceProcess) -> None:
    """`start` for a stand-in service: a child process that only sleeps."""

    def start() -> None:
        service.started_at = time.monotonic()
        service.restart_at = None
        service.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])

    service.start = start  # type: ignore[method-assign]


def _wait_for(condition, what: str, limit_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit_s} s: {what}")
        time.sleep(0.02)


def test_a_killed_service_comes_back_and_an_idle_watcher_sleeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor = Supervisor({"storage": {}}, tmp_path, tmp_path / "pids.json")
    service = supervisor.services["storage"]
    _sleeper(service)
    looks: list[float] = []
    real = stack_services._exit_fds

    def counted(running: list[ServiceProcess]) -> list[int] | None:
        looks.append(time.monotonic())
        return real(running)

    monkeypatch.setattr(stack_services, "_exit_fds", counted)
    supervisor.start()
    try:
        _wait_for(lambda: len(looks) >= 1, "the watcher's first look")
        time.sleep(1.0)  # at rest: a poll would have looked ~4 more times
        assert len(looks) == 1
        first = service.proc
        assert first is not None
        first.send_signal(signal.SIGKILL)
        _wait_for(lambda: service.restarts == 1 and service.alive, "the restart")
        assert service.proc is not first
    finally:
        supervisor.stop(timeout=5)
    assert not service.alive
    assert not (tmp_path / "pids.json").exists()
