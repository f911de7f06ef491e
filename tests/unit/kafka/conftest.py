"""Fixtures of the Kafka adapter's unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.kafka.mock_cluster import MockCluster, mock_cluster


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    """librdkafka's mock cluster (skipped where the bundled librdkafka lacks it)."""
    try:
        with mock_cluster() as found:
            yield found
    except LookupError as exc:
        pytest.skip(f"librdkafka mock cluster unavailable: {exc}")
