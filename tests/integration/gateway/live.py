"""The gateway app served by a real uvicorn server on a loopback port, in a thread.

Real HTTP between the client and the app (uvicorn's httptools parser, or h11 where `http`
says so): request bodies arrive in network chunks, Content-Length is what the client
declared, and a refusal reaches the client while it is still sending. The app keeps its
real lifespan; the caller injects the broker and blobs.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI
from uvicorn.config import HTTPProtocolType


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve(app: FastAPI, http: HTTPProtocolType = "auto") -> Iterator[str]:
    """Run `app` until the block ends; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=http, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
