"""`imagegen up --broker`: Apache Kafka where a JDK 17+ is found, Tansu only as the fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegen.errors import ConfigurationError
from imagegen.settings import KafkaSettings
from imagegen.stack import StackError
from imagegen.stack.local import _client_timings, choose_broker


def _no_java(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    monkeypatch.setenv("PATH", str(tmp_path))


def test_auto_picks_apache_kafka_where_java_is_found() -> None:
    kind, said = choose_broker("auto")
    assert kind == "kafka" and said.startswith("Apache Kafka 4.")


def test_auto_falls_back_to_tansu_without_java_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_java(monkeypatch, tmp_path)
    kind, said = choose_broker("auto")
    assert kind == "tansu"
    assert "no-JVM fallback" in said and "Java 17+" in said


def test_kafka_asked_for_without_java_is_an_error_not_a_switch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_java(monkeypatch, tmp_path)
    with pytest.raises(StackError, match=r"Java 17\+"):
        choose_broker("kafka")


def test_tansu_is_taken_when_asked_for() -> None:
    assert choose_broker("tansu")[0] == "tansu"


def test_an_unknown_broker_is_named() -> None:
    with pytest.raises(ConfigurationError, match="'redpanda'"):
        choose_broker("redpanda")


def test_the_stack_spaces_out_idle_requests_on_apache_kafka_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IMAGEGEN_KAFKA_FETCH_WAIT_MAX_MS", raising=False)
    monkeypatch.delenv("IMAGEGEN_KAFKA_SESSION_TIMEOUT_MS", raising=False)
    monkeypatch.delenv("IMAGEGEN_KAFKA_HEARTBEAT_INTERVAL_MS", raising=False)
    monkeypatch.delenv("IMAGEGEN_KAFKA_POLL_TIMEOUT_MS", raising=False)
    assert _client_timings("kafka") == {
        "IMAGEGEN_KAFKA_FETCH_WAIT_MAX_MS": "5000",
        "IMAGEGEN_KAFKA_SESSION_TIMEOUT_MS": "30000",
        "IMAGEGEN_KAFKA_HEARTBEAT_INTERVAL_MS": "5000",
        "IMAGEGEN_KAFKA_POLL_TIMEOUT_MS": "10000",
    }
    # Tansu holds a fetch for half the wait even when a message arrives: it keeps 100 ms,
    # and the default 6 s session its joins need. The loops' poll timeout is the client's.
    assert _client_timings("tansu") == {
        "IMAGEGEN_KAFKA_FETCH_WAIT_MAX_MS": "100",
        "IMAGEGEN_KAFKA_POLL_TIMEOUT_MS": "10000",
    }
    for key, value in _client_timings("kafka").items():  # names the services read
        monkeypatch.setenv(key, value)
    settings = KafkaSettings()
    assert (settings.fetch_wait_max_ms, settings.session_timeout_ms) == (5000, 30000)
    assert settings.heartbeat_ms() == 5000
    assert settings.poll_timeout_ms == 10000


def test_the_callers_timings_win_on_either_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_KAFKA_FETCH_WAIT_MAX_MS", "500")
    monkeypatch.setenv("IMAGEGEN_KAFKA_SESSION_TIMEOUT_MS", "6000")
    monkeypatch.setenv("IMAGEGEN_KAFKA_POLL_TIMEOUT_MS", "1000")
    for kind in ("kafka", "tansu"):
        assert _client_timings(kind) == {
            "IMAGEGEN_KAFKA_FETCH_WAIT_MAX_MS": "500",
            "IMAGEGEN_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "IMAGEGEN_KAFKA_POLL_TIMEOUT_MS": "1000",
        }


def test_a_callers_session_takes_heartbeats_at_a_third_of_it_unless_they_chose_those(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IMAGEGEN_KAFKA_HEARTBEAT_INTERVAL_MS", raising=False)
    monkeypatch.setenv("IMAGEGEN_KAFKA_SESSION_TIMEOUT_MS", "4000")
    timings = _client_timings("kafka")
    assert "IMAGEGEN_KAFKA_HEARTBEAT_INTERVAL_MS" not in timings
    for key, value in timings.items():
        monkeypatch.setenv(key, value)
    assert KafkaSettings().heartbeat_ms() == 1333
    monkeypatch.setenv("IMAGEGEN_KAFKA_HEARTBEAT_INTERVAL_MS", "1000")
    assert _client_timings("kafka")["IMAGEGEN_KAFKA_HEARTBEAT_INTERVAL_MS"] == "1000"


def test_heartbeats_as_long_as_the_session_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMAGEGEN_KAFKA_SESSION_TIMEOUT_MS", "6000")
    monkeypatch.setenv("IMAGEGEN_KAFKA_HEARTBEAT_INTERVAL_MS", "6000")
    with pytest.raises(ConfigurationError, match="IMAGEGEN_KAFKA_HEARTBEAT_INTERVAL_MS"):
        KafkaSettings()
