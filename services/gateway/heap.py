"""Garbage-collector pauses kept short while thousands of SSE streams stay open.

A full collection of CPython's cyclic garbage collector stops the event loop for as long
as it takes to scan every tracked object: with 2000 open streams (some 170 objects each,
most of them request frames that live as long as the stream) plus the imported code,
that was 0.4-2.5 s on a busy two-core machine, a stall every stream felt at once.

So the gateway moves what has survived a young collection into the collector's permanent
generation every `freeze_every_s` (`gc.freeze()`: the objects are still freed by their
reference counts; only reference cycles among them wait), and full collections scan only
what is newer. Every `full_every_s` everything is unfrozen and collected once, so cyclic
garbage among frozen objects (a few objects per closed stream) is bounded.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

FREEZE_EVERY_S = 10.0
FULL_EVERY_S = 3600.0


def freeze_long_lived(
    loop: asyncio.AbstractEventLoop,
    freeze_every_s: float = FREEZE_EVERY_S,
    full_every_s: float = FULL_EVERY_S,
) -> Callable[[], None]:
    """Freeze the survivors now and every `freeze_every_s` on `loop` (a timer, no task);
    returns what stops it (and unfreezes)."""
    next_full = time.monotonic() + full_every_s
    timer: asyncio.TimerHandle | None = None

    def tick() -> None:
        nonlocal next_full, timer
        if time.monotonic() >= next_full:
            gc.unfreeze()
            gc.collect()
            next_full = time.monotonic() + full_every_s
        else:
            gc.collect(1)  # young garbage out first: only survivors are frozen
        gc.freeze()
        timer = loop.call_later(freeze_every_s, tick)

    def stop() -> None:
        if timer is not None:
            timer.cancel()
        gc.unfreeze()

    tick()
    return stop
