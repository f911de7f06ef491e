"""Real servers for the gateway's integration tests.

The `tests.fixtures.servers` plugin is loaded here unless a root conftest already did.
"""

from __future__ import annotations

import pytest

_SERVERS = "tests.fixtures.servers"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(_SERVERS):
        config.pluginmanager.import_plugin(_SERVERS)
