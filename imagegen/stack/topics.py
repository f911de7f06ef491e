"""Create the topics of `schemas.topics.registry` on a Kafka-protocol broker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imagegen.stack import StackError
from schemas.topics import DEFAULT_NAMESPACE, TopicSpec, registry


def create_topics(
    bootstrap: str,
    namespace: str = DEFAULT_NAMESPACE,
    timeout: float = 30.0,
    specs: list[TopicSpec] | None = None,
    config: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create every topic of the namespace with its partitions and configs; idempotent.

    Returns the names of the topics that were created now (existing ones are left as
    they are). Topics must exist before clients touch them: brokers that create topics on
    first use (Tansu always does) would give them the wrong partitions and configs.
    `config`: the admin client's security keys (`imagegen.kafka.security.watched_config`;
    the `bootstrap` argument wins).
    """
    # Imported here: the C library loads on import, and nothing else in this module needs it.
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    specs = registry(namespace) if specs is None else specs
    from imagegen.kafka.access import ACCESS

    admin = AdminClient(
        {
            **(config or {}),
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": int(timeout * 1000),
        }
    )
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, config=dict(s.configs)) for s in specs],
        request_timeout=timeout,
        operation_timeout=timeout,
    )
    created: list[str] = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except KafkaException as err:
            if err.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            why = ACCESS.note(err.args[0], topic=name) or err
            raise StackError(f"cannot create topic {name} on {bootstrap}: {why}") from err
        except TimeoutError as err:
            problem = ACCESS.problem()
            refused = f": {problem}" if problem else ""
            raise StackError(
                f"broker {bootstrap} did not create {name} in {timeout}s{refused}"
            ) from err
    return created
