"""The broker's timer slack: set for the process the stack starts, never left on the caller."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from imagegen.stack import StackError
from imagegen.stack.kafka import KAFKA_TIMER_SLACK_MS, kafka_timer_slack_ns
from imagegen.stack.process import timer_slack

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")


def _own_slack() -> int:
    return _slack_of(threading.get_native_id())


def _slack_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/timerslack_ns").read_text())


@linux_only
def test_a_process_started_inside_keeps_the_slack_and_the_caller_gets_its_own_back() -> None:
    before = _own_slack()
    with timer_slack(7_000_000):
        assert _own_slack() == 7_000_000
        child = subprocess.Popen(["sleep", "5"])
    try:
        assert _own_slack() == before
        assert _slack_of(child.pid) == 7_000_000
    finally:
        child.kill()
        child.wait()


@linux_only
def test_the_slack_is_put_back_when_the_start_fails() -> None:
    before = _own_slack()
    with pytest.raises(FileNotFoundError), timer_slack(9_000_000):
        subprocess.Popen(["/nonexistent/imagegen-binary"])
    assert _own_slack() == before


@linux_only
def test_none_changes_nothing() -> None:
    before = _own_slack()
    with timer_slack(None):
        assert _own_slack() == before


def test_the_broker_default_and_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGEGEN_KAFKA_TIMER_SLACK_MS", raising=False)
    assert kafka_timer_slack_ns() == KAFKA_TIMER_SLACK_MS * 1_000_000
    monkeypatch.setenv("IMAGEGEN_KAFKA_TIMER_SLACK_MS", "2.5")
    assert kafka_timer_slack_ns() == 2_500_000
    monkeypatch.setenv("IMAGEGEN_KAFKA_TIMER_SLACK_MS", "0")
    assert kafka_timer_slack_ns() is None


@pytest.mark.parametrize("raw", ["fast", "-1"])
def test_a_bad_override_names_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("IMAGEGEN_KAFKA_TIMER_SLACK_MS", raw)
    with pytest.raises(StackError, match="IMAGEGEN_KAFKA_TIMER_SLACK_MS"):
        kafka_timer_slack_ns()
