"""Kafka plumbing: ports, the confluent-kafka adapters, an in-memory fake and the consumer loop."""

from imagegen.kafka.codec import decode, encode
from imagegen.kafka.deferred import DeferredPublisher
from imagegen.kafka.ports import BatchConsumer, BatchHandler, Consumer, Handler, Publisher, Record
from imagegen.kafka.worker import ConsumerLoop, handling

__all__ = [
    "BatchConsumer",
    "BatchHandler",
    "Consumer",
    "ConsumerLoop",
    "DeferredPublisher",
    "Handler",
    "Publisher",
    "Record",
    "decode",
    "encode",
    "handling",
]
