"""Dead letters on the real broker: listed with their origin and error, re-driven once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from imagegen.cli import build_parser
from imagegen.errors import PermanentError
from imagegen.kafka import ConsumerLoop, Record
from imagegen.kafka.confluent import KafkaConsumer, KafkaPublisher
from imagegen.kafka.redrive import DeadLetter, load, read_topic, redrive, scan, select
from schemas.deadletter import HEADER_REDRIVE_OF, HEADER_REDRIVEN_FROM, DeadLetterHeaders
from schemas.topics import TopicNames

IDLE = 1.0  # seconds without a message that end a read of a whole topic


async def _consume(
    bootstrap: str,
    topics: TopicNames,
    group: str,
    handler: Callable[[Record], None],
    done: Callable[[], bool],
) -> ConsumerLoop:
    """Run the service consumer loop on `requests` until `done()`."""
    publisher = KafkaPublisher(bootstrap, "test")

    async def handle(record: Record) -> None:
        handler(record)

    loop = ConsumerLoop(
        name=group,
        consumer=KafkaConsumer(bootstrap, f"{topics.namespace}.{group}", [topics.requests]),
        handlers={topics.requests: handle},
        dead_letters=publisher,
        dead_letter_topic=topics.dead_letter,
        backoff_initial=0.01,
    )
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(60):
            while not done():
                await asyncio.sleep(0.05)
    finally:
        loop.stop()
        await task
        await publisher.close()
    return loop


def _fail_bad(record: Record) -> None:
    if record.value.startswith(b"bad"):
        raise PermanentError(f"cannot handle {record.value.decode()}")


async def _produce_and_dead_letter(bootstrap: str, topics: TopicNames) -> None:
    publisher = KafkaPublisher(bootstrap, "test")
    for key, value in (("u1", b"bad-1"), ("u2", b"good"), ("u3", b"bad-2")):
        await publisher.publish(topics.requests, key, value, {"traceparent-ish": key})
    await publisher.close()
    seen: list[Record] = []

    def handle(record: Record) -> None:
        seen.append(record)
        _fail_bad(record)

    loop = await _consume(bootstrap, topics, "svc", handle, lambda: len(seen) >= 3)
    assert loop.dead_lettered == 2


def _cli(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    result: int = args.func(args)
    return result


def _requests_values(bootstrap: str, topics: TopicNames) -> list[bytes]:
    return [r.value for r in read_topic(bootstrap, topics.requests, idle_timeout=IDLE)]


def test_list_redrive_once_force_and_all(
    kafka_bootstrap: str, topic_namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = TopicNames(topic_namespace)
    asyncio.run(_produce_and_dead_letter(kafka_bootstrap, topics))
    where = ["--bootstrap", kafka_bootstrap, "--namespace", topic_namespace]
    idle = ["--idle-timeout", str(IDLE)]

    # list: origin, key, error type and message, time; both pending.
    assert _cli("dlq", "list", *where, *idle, "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((r["key"], r["original_topic"], r["error_type"]) for r in rows) == [
        ("u1", topics.requests, "PermanentError"),
        ("u3", topics.requests, "PermanentError"),
    ]
    by_key = {r["key"]: r for r in rows}
    assert by_key["u1"]["error_message"] == "cannot handle bad-1"
    assert by_key["u1"]["failed_at"] and by_key["u1"]["failed_by"] == "svc"
    assert by_key["u1"]["original"].startswith(f"{topics.requests}:")
    assert {r["redriven_at"] for r in rows} == {None}
    assert _cli("dlq", "list", *where, *idle) == 0
    text = capsys.readouterr().out
    assert "2 dead letter(s)" in text and "cannot handle bad-2" in text and "pending" in text

    # redrive one: the original key, value and headers go back to the original topic.
    first = by_key["u1"]["id"]
    assert _cli("dlq", "redrive", *where, *idle, "--id", first) == 0
    assert f"redriven {first}" in capsys.readouterr().out
    (republished,) = [
        r
        for r in read_topic(kafka_bootstrap, topics.requests, idle_timeout=IDLE)
        if HEADER_REDRIVEN_FROM in r.headers
    ]
    assert (republished.key, republished.value) == ("u1", b"bad-1")
    assert republished.headers["traceparent-ish"] == "u1"
    assert not any(h.startswith(("x-error", "x-original", "x-failed")) for h in republished.headers)
    assert republished.headers[HEADER_REDRIVEN_FROM] == f"{topics.dead_letter}:{first}"

    # the marker shows in the list and a second redrive is refused, republishing nothing.
    letters = load(kafka_bootstrap, topics.dead_letter, idle_timeout=IDLE)
    assert len(letters) == 2  # the marker is not a dead letter
    assert {d.record.key: bool(d.redriven_at) for d in letters} == {"u1": True, "u3": False}
    assert _cli("dlq", "redrive", *where, *idle, "--id", first) == 1
    assert "re-driven already" in capsys.readouterr().err
    assert len(_requests_values(kafka_bootstrap, topics)) == 4

    # unknown ids change nothing.
    assert _cli("dlq", "redrive", *where, *idle, "--id", "3:999") == 2
    assert "3:999" in capsys.readouterr().err

    # --all re-drives only what is pending; --force re-drives again.
    assert _cli("dlq", "redrive", *where, *idle, "--all") == 0
    out = capsys.readouterr()
    assert "1 redriven, 1 refused" in out.out
    assert _cli("dlq", "redrive", *where, *idle, "--force", "--id", first) == 0
    capsys.readouterr()
    values = _requests_values(kafka_bootstrap, topics)
    assert sorted(values) == sorted([b"bad-1", b"good", b"bad-2", b"bad-1", b"bad-2", b"bad-1"])


async def test_redriven_message_reaches_the_service_again(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    topics = TopicNames(topic_namespace)
    await _produce_and_dead_letter(kafka_bootstrap, topics)
    letters = await asyncio.to_thread(load, kafka_bootstrap, topics.dead_letter, idle_timeout=IDLE)
    publisher = KafkaPublisher(kafka_bootstrap, "test")
    try:
        result = await redrive(
            publisher, topics.dead_letter, select(letters, everything=True), by="test"
        )
    finally:
        await publisher.close()
    assert len(result.redriven) == 2 and not result.refused
    # The service (same group, offsets committed) now handles them: the fault was fixed.
    handled: list[Record] = []
    await _consume(kafka_bootstrap, topics, "svc", handled.append, lambda: len(handled) >= 2)
    assert sorted((r.key, r.value) for r in handled) == [("u1", b"bad-1"), ("u3", b"bad-2")]


def _dead(partition: int, offset: int, origin_offset: int) -> Record:
    headers = DeadLetterHeaders(
        error_type="PermanentError",
        error_message="boom",
        original_topic="t.requests.v1",
        original_partition=0,
        original_offset=origin_offset,
        failed_by="svc",
        failed_at="2026-11-21T00:00:00+00:00",
        attempts=1,
    ).to_headers()
    return Record("t.deadletter.v1", partition, offset, "k", b"v", headers)


def test_duplicate_dead_letters_of_one_message_are_redriven_once() -> None:
    # At-least-once dead-lettering can write the same original twice: one redrive covers both.
    a, b, other = _dead(0, 0, 5), _dead(1, 0, 5), _dead(0, 1, 6)
    marker = Record("t.deadletter.v1", 2, 0, "k", b"{}", {HEADER_REDRIVE_OF: "t.requests.v1:0:5"})
    letters = scan([a, b, other, marker])
    assert [(d.id, bool(d.redriven_at)) for d in letters] == [
        ("0:0", True),
        ("0:1", False),
        ("1:0", True),
    ]
    malformed = scan([Record("t.deadletter.v1", 3, 0, None, b"x", {})])
    assert malformed[0].info is None and malformed[0].origin is None


async def test_duplicates_in_one_batch_and_headerless_letters_are_refused() -> None:
    published: list[tuple[str, str | None, bytes]] = []

    class Recorder:
        async def publish(
            self,
            topic: str,
            key: str | None,
            value: object,
            headers: dict[str, str] | None = None,
        ) -> None:
            assert isinstance(value, bytes)
            published.append((topic, key, value))

        async def close(self) -> None:
            return None

    letters: list[DeadLetter] = scan(
        [_dead(0, 0, 5), _dead(1, 0, 5), Record("t.deadletter.v1", 3, 0, None, b"x", {})]
    )
    result = await redrive(Recorder(), "t.deadletter.v1", letters, by="test")
    assert [d.id for d in result.redriven] == ["0:0"]
    assert sorted(reason.split(" ")[0] for _, reason in result.refused) == ["a", "no"]
    assert [t for t, _, _ in published] == ["t.requests.v1", "t.deadletter.v1"]
    with pytest.raises(PermanentError, match="not both"):
        select(letters, ids=["0:0"], everything=True)
