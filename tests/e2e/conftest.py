"""End-to-end tests leave no databases behind on a shared PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.stack import drop_created_databases


@pytest.fixture(scope="session", autouse=True)
def _drop_stack_databases() -> Iterator[None]:
    yield
    drop_created_databases()
