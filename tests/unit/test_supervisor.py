"""The local stack's supervisor: a crash-looping service backs off, a stable one comes back
at once, and one service's backoff never delays another's restart."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from imagegen.stack.services import MAX_BACKOFF_S, STABLE_AFTER_S, Supervisor


class Clock:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.starts: list[tuple[str, float]] = []
        self.now = 0.0
        for service in supervisor.services.values():
            service.start = self._starter(service.name)  # type: ignore[method-assign]
            service.start()

    def _starter(self, name: str):  # type: ignore[no-untyped-def]
        def start() -> None:
            service = self.supervisor.services[name]
            service.started_at, service.restart_at = self.now, None
            self.starts.append((name, self.now))

        return start

    def tick(self, until: float, dead: set[str]) -> None:
        """Advance to `until` in 0.25 s steps; the services in `dead` are down at each step."""
        while self.now < until:
            self.now += 0.25
            for name in dead:
                service = self.supervisor.services[name]
                if service.restart_at is not None or self.now - service.started_at > 0.1:
                    self.supervisor._revive(service, self.now)


@pytest.fixture
def clock(tmp_path: Path) -> Clock:
    envs: dict[str, dict[str, str]] = {"storage": {}, "gateway": {}}
    return Clock(Supervisor(envs, tmp_path, tmp_path / "pids.json"))


def gaps(clock: Clock, name: str) -> list[float]:
    times = [t for n, t in clock.starts if n == name]
    return [round(b - a, 2) for a, b in itertools.pairwise(times)]


def test_a_crash_loop_backs_off_to_the_cap_and_a_stable_run_resets_it(clock: Clock) -> None:
    clock.tick(60, {"storage"})
    waits = gaps(clock, "storage")
    assert waits[:5] == sorted(waits[:5]) and waits[0] < 1.5
    assert max(waits) <= MAX_BACKOFF_S + 0.5 and waits[-1] >= MAX_BACKOFF_S
    # Once back, it runs past STABLE_AFTER_S, then dies: back within a second, not the cap.
    while clock.supervisor.services["storage"].restart_at is not None:
        clock.tick(clock.now + 0.25, {"storage"})
    clock.tick(clock.now + STABLE_AFTER_S + 1, set())
    before = len(gaps(clock, "storage"))
    clock.tick(clock.now + 1.5, {"storage"})
    assert len(gaps(clock, "storage")) == before + 1
    assert clock.supervisor.services["storage"].restarts == before + 1


def test_one_services_backoff_does_not_hold_up_another(clock: Clock) -> None:
    clock.tick(40, {"storage"})  # storage is deep in its backoff
    start = clock.now
    clock.tick(start + 1.0, {"gateway"})
    assert next(t for n, t in clock.starts if n == "gateway" and t > start) - start <= 1.0
