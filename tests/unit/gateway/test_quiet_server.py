"""The gateway's server loop (services/gateway/__main__.py, `QuietServer`): it looks at its
state once a `TICK_S` at rest, not ten times a second, and a stop asked from another
thread or by a signal ends it at once, not at the next tick."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from imagegen.stack.ports import free_port
from services.gateway import __main__ as gateway_main
from services.gateway.__main__ import QuietServer


async def _hello(
    scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.fixture
def serving(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[QuietServer, list[int], str]]:
    # A tick far away: the loop can only end if a stop wakes it.
    monkeypatch.setattr(gateway_main, "TICK_S", 3600.0)
    port = free_port()
    config = uvicorn.Config(_hello, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = QuietServer(config)
    ticks: list[int] = []
    on_tick = server.on_tick

    async def counted(counter: int) -> bool:
        ticks.append(counter)
        return await on_tick(counter)

    monkeypatch.setattr(server, "on_tick", counted)
    thread = threading.Thread(target=server.run, name="quiet-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield server, ticks, f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        server.wake()
        thread.join(10)
    assert not thread.is_alive(), "the server did not stop"


def test_the_loop_sleeps_between_ticks_and_serves(
    serving: tuple[QuietServer, list[int], str],
) -> None:
    _, ticks, url = serving
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200 and response.text == "hello"
    assert "date" in response.headers  # set by the first tick
    time.sleep(0.5)  # uvicorn's own loop would have ticked five more times
    assert ticks == [0]


@pytest.mark.parametrize("how", ["stop", "signal"])
def test_a_stop_wakes_the_loop_at_once(
    serving: tuple[QuietServer, list[int], str], how: str
) -> None:
    server, ticks, _ = serving
    if how == "stop":
        server.stop()
    else:
        server.handle_exit(signal.SIGTERM, None)
    deadline = time.monotonic() + 30
    while len(ticks) < 2:
        assert time.monotonic() < deadline, "the stop did not wake the loop"
        time.sleep(0.01)
    assert ticks == [0, 10] and server.should_exit
