"""Loopback port helpers: find free ports, and wait for a server's port to open."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

from imagegen.stack import StackError

LOOPBACK = "127.0.0.1"

# Ports handed out by this process: two servers started back to back must not be
# offered the same port before either has bound it.
_handed_out: set[int] = set()


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True when something already listens on host:port (or it cannot be bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        if probe.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: connections of a stopped server left in TIME_WAIT don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# Ports `free_port` chooses from: below Linux's ephemeral range (32768+), where outgoing
# connections get their local ports, and apart from `free_port_with_offset`'s pairs
# (20000-22767 and 30000-32767). A port from bind(0) is an ephemeral one: a client
# connection opened before the server bound it could take it (a stack's gateway then
# failed to bind its port for minutes, "address already in use").
_FREE_PORTS = (23000, 29999)


def free_port(host: str = LOOPBACK) -> int:
    """A loopback port nothing listens on now, never returned before by this process."""
    low, high = _FREE_PORTS
    for _ in range(200):
        port = random.randint(low, high)
        if port not in _handed_out and not port_in_use(port, host):
            _handed_out.add(port)
            return port
    for _ in range(100):  # that range is full: whatever the kernel gives
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise StackError("no free loopback port found")


def free_port_with_offset(offset: int, host: str = LOOPBACK) -> int:
    """A free port p whose p + offset is free too (SeaweedFS derives gRPC ports that way)."""
    if not 0 < offset < 12000:
        raise ValueError("offset must be between 1 and 11999")
    for _ in range(200):
        # Below Linux's ephemeral range (32768+), where clients' outgoing ports live.
        port = random.randint(20000, 32767 - offset)
        pair = (port, port + offset)
        if any(p in _handed_out for p in pair) or any(port_in_use(p, host) for p in pair):
            continue
        _handed_out.update(pair)
        return port
    raise StackError(f"no pair of free loopback ports {offset} apart found")


def wait_for_port(
    host: str,
    port: int,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    *,
    name: str = "server",
    log_file: Path | None = None,
) -> None:
    """Block until host:port accepts TCP connections; fail fast if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise StackError(
                f"{name} exited with code {proc.returncode} before listening on "
                f"{host}:{port}{log_hint(log_file)}"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        if time.monotonic() >= deadline:
            raise StackError(
                f"{name} did not listen on {host}:{port} within {timeout:.0f}s{log_hint(log_file)}"
            )
        time.sleep(0.05)


def log_hint(log_file: Path | None, lines: int = 20) -> str:
    """The tail of a server's log, for error messages."""
    if log_file is None or not log_file.exists():
        return ""
    tail = log_file.read_text(errors="replace").splitlines()[-lines:]
    return f"; see {log_file}:\n" + "\n".join(tail)
