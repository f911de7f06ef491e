"""A child server process: started with its output in a log file, stopped politely then firmly."""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from imagegen.stack import StackError
from imagegen.stack.ports import LOOPBACK, log_hint, port_in_use, wait_for_port


def find_binary(name: str, hint: str) -> Path:
    """The executable `name`: next to this interpreter first (the venv's bin), then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} binary not found next to {sys.executable} nor on PATH; {hint}")
    return Path(found)


# prctl(2) options (linux/prctl.h).
_PR_SET_TIMERSLACK = 29
_PR_GET_TIMERSLACK = 30


@contextmanager
def timer_slack(nanoseconds: int | None) -> Iterator[None]:
    """This thread's timer slack set to `nanoseconds` for the block, then put back.

    A process started inside the block keeps the value, and every thread it ever starts
    does too (prctl(2): a new thread takes its creator's slack, and execve keeps it). The
    kernel may then fire any of their timed sleeps up to that much late, so that wake-ups
    falling close together are served together; a wake-up by I/O or by another thread is
    never delayed. None, or a system without prctl: nothing changes.
    """
    libc = _libc()
    if nanoseconds is None or libc is None:
        yield
        return
    previous = libc.prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0)
    libc.prctl(_PR_SET_TIMERSLACK, nanoseconds, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(_PR_SET_TIMERSLACK, previous, 0, 0, 0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    libc.prctl.restype = ctypes.c_int
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    return libc


class ServerProcess:
    """Base for one server process listening on one main loopback port."""

    name = "server"
    port_flag = "--port"
    start_timeout = 30.0
    stop_timeout = 10.0
    timer_slack_ns: int | None = None
    """The process's timer slack (see `timer_slack`); None: the system's default."""

    def __init__(self, port: int, log_dir: Path) -> None:
        self.port = port
        self.log_dir = Path(log_dir)
        self.log_file = self.log_dir / f"{self.name.lower().replace(' ', '-')}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # Subclasses say how to run themselves.
    def command(self) -> Sequence[str]:
        raise NotImplementedError

    def environment(self) -> Mapping[str, str]:
        return {}

    def wait_ready(self) -> None:
        """Block until the server serves; by default until its port accepts connections."""
        wait_for_port(
            LOOPBACK,
            self.port,
            self.start_timeout,
            self._proc,
            name=self.name,
            log_file=self.log_file,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        if port_in_use(self.port):
            raise StackError(
                f"port {self.port} is already in use ({self.name}); pass {self.port_flag}"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = list(self.command())
        with self.log_file.open("ab") as log:
            log.write(f"--- starting: {' '.join(command)}\n".encode())
            log.flush()
            # A session of its own: a Ctrl+C in the terminal reaches `imagegen up`, which
            # then stops its servers in order, instead of every child dying at once.
            with timer_slack(self.timer_slack_ns):
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **self.environment()},
                    start_new_session=True,
                )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM, wait up to `stop_timeout`, then SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(self.stop_timeout)

    def kill(self) -> None:
        """SIGKILL at once, as a crash would (tests of durability use it)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(self.stop_timeout)

    def log_tail(self) -> str:
        return log_hint(self.log_file)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
