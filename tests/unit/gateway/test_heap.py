"""The gateway's garbage-collector policy (services/gateway/heap.py): survivors frozen out
of collections, and cyclic garbage among them still collected at the periodic full one."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable

from services.gateway import heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_frozen_survivors_wait_for_the_full_collection() -> None:
    node = _Node()
    alive = weakref.ref(node)
    stop = heap.freeze_long_lived(
        asyncio.get_running_loop(), freeze_every_s=0.05, full_every_s=3600
    )
    try:
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()  # a full collection skips frozen objects: the cycle stays
        assert alive() is not None
    finally:
        stop()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert alive() is None


async def test_the_periodic_full_collection_frees_frozen_garbage() -> None:
    node = _Node()
    alive = weakref.ref(node)
    stop = heap.freeze_long_lived(asyncio.get_running_loop(), freeze_every_s=0.05, full_every_s=0.3)
    try:
        del node
        assert alive() is not None  # frozen at the first tick
        await _until(lambda: alive() is None)  # the full one unfreezes and collects it
        await _until(lambda: gc.get_freeze_count() > 0)  # and freezing goes on
    finally:
        stop()
    assert gc.get_freeze_count() == 0
