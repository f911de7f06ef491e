"""Kafka plumbing: ports, the confluent-kafka adapters, an in-memory fake and the consumer loop."""

from imagegen.kafka.codec import decode, encode
from imagegen.kafka.ports import Consumer, Handler, Publisher, Record
from imagegen.kafka.worker import ConsumerLoop

__all__ = ["Consumer", "ConsumerLoop", "Handler", "Publisher", "Record", "decode", "encode"]
