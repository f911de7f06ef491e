"""librdkafka's own log lines go through our logging; an unreachable broker is a warning."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Producer

from imagegen.kafka.confluent import CLIENT_LOG, ClientLog
from imagegen.stack.ports import free_port


def test_connection_failures_are_warnings_in_our_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="imagegen.kafka.client")
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "logger": CLIENT_LOG})
    producer.produce("t", b"x")
    deadline = time.monotonic() + 10
    while not caplog.records and time.monotonic() < deadline:
        producer.poll(0.1)
    record = caplog.records[0]
    assert record.name == "imagegen.kafka.client" and record.levelno == logging.WARNING
    assert record.getMessage().startswith("FAIL [rdkafka#producer")
    assert "Connection refused" in record.getMessage()
    producer.purge()


def test_other_lines_keep_librdkafka_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="imagegen.kafka.test")
    log = ClientLog("imagegen.kafka.test")
    log.log(logging.ERROR, "%s [%s] %s", "ERROR", "rdkafka#consumer-1", "something broke")
    log.log(logging.INFO, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "not raised")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "ERROR [rdkafka#consumer-1] something broke"),
        (logging.INFO, "FAIL [rdkafka#consumer-1] not raised"),
    ]
