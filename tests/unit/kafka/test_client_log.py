"""librdkafka's own log lines go through our logging; an unreachable broker is a warning."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Consumer, Producer

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


REFUSED = (
    "[thrd:127.0.0.1:4711/bootstrap]: 127.0.0.1:4711/bootstrap: Connect to ipv4#127.0.0.1:4711"
    " failed: Connection refused (after {ms}ms in state CONNECT)"
)


def test_a_failure_said_again_within_the_quiet_time_is_counted_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="imagegen.kafka.quiet")
    now = [100.0]
    log = ClientLog("imagegen.kafka.quiet", quiet_s=10.0, clock=lambda: now[0])

    def fail(client: str, text: str) -> None:
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", client, text)

    for ms in range(5):  # the consumer's retries every 50 ms while the broker is down
        fail("imagegen-scheduler#consumer-2", REFUSED.format(ms=ms))
        now[0] += 0.05
    fail("imagegen-scheduler#producer-1", REFUSED.format(ms=0))  # another client
    fail("imagegen-scheduler#consumer-2", "[thrd:GroupCoordinator]: Disconnected")
    now[0] = 110.5
    fail("imagegen-scheduler#consumer-2", REFUSED.format(ms=7))
    fail("imagegen-scheduler#consumer-2", REFUSED.format(ms=8))

    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert said == [
        (logging.WARNING, "FAIL [imagegen-scheduler#consumer-2] " + REFUSED.format(ms=0)),
        (logging.WARNING, "FAIL [imagegen-scheduler#producer-1] " + REFUSED.format(ms=0)),
        (
            logging.WARNING,
            "FAIL [imagegen-scheduler#consumer-2] [thrd:GroupCoordinator]: Disconnected",
        ),
        (
            logging.WARNING,
            "FAIL [imagegen-scheduler#consumer-2] "
            + REFUSED.format(ms=7)
            + " (4 more like it in the last 10 s)",
        ),
    ]


def test_a_consumer_whose_broker_is_down_says_so_once_not_on_every_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="imagegen.kafka.client")
    consumer = Consumer(
        {
            "bootstrap.servers": f"127.0.0.1:{free_port()}",
            "group.id": "g",
            "client.id": "down",
            "logger": CLIENT_LOG,
        }
    )
    consumer.subscribe(["t"])
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        consumer.poll(0.1)
    consumer.close()
    fails = [r for r in caplog.records if r.getMessage().startswith("FAIL [down#consumer")]
    # librdkafka retries the bootstrap connection every 50 ms here: ~60 lines in 3 s.
    assert 1 <= len(fails) <= 2, [r.getMessage() for r in fails]
