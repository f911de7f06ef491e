"""`imagegen up --broker`: Apache Kafka where a JDK 17+ is found, Tansu only as the fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegen.errors import ConfigurationError
from imagegen.stack import StackError
from imagegen.stack.local import choose_broker


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
