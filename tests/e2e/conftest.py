"""End-to-end tests leave no databases behind on a shared PostgreSQL server, and the modules
that need nothing but a plain demo stack share one.

`demo_stack` is `imagegen up --backend demo` with no other settings, started for the first
test that asks for it and stopped as soon as the next test does not (pytest's session scope
would keep it running, idle but not free, under every later module's own stack). Modules
that use it keep to users of their own, except test_browser.py's first test, which signs
in with the token `imagegen up` prints; so no module's galleries or job lists see another's.
Starting and stopping a stack (Kafka's JVM, SeaweedFS, six services) takes about 20 s on a
quiet machine and over a minute on a busy one: one stack instead of one per module saves
that for each module that shares it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.e2e.stack import RunningStack, drop_created_databases, imagegen_up

SHARED = "demo_stack"


class _SharedStack:
    """The one plain demo stack, started on demand and stopped on request."""

    def __init__(self) -> None:
        self._exit = ExitStack()
        self._stack: RunningStack | None = None

    @property
    def running(self) -> bool:
        return self._stack is not None

    def get(self, tmp_path_factory: pytest.TempPathFactory) -> RunningStack:
        if self._stack is None:
            folder = tmp_path_factory.mktemp("shared-demo-stack")
            self._stack = self._exit.enter_context(imagegen_up(folder, ["--backend", "demo"]))
        return self._stack

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; it must stop everything cleanly and say so."""
        stack, self._stack = self._stack, None
        self._exit.close()
        if stack is not None:
            assert stack.proc.returncode == 0, "".join(stack.output[-30:])
            assert "stopped\n" in stack.output


_shared = _SharedStack()


@pytest.fixture(scope="module")
def demo_stack(tmp_path_factory: pytest.TempPathFactory) -> RunningStack:
    """The shared plain demo stack (see the module's docstring)."""
    return _shared.get(tmp_path_factory)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the shared stack run one after another, from where the first of them
    stands (each module's own order kept), so that one stack serves them all."""
    shared = [item for item in items if SHARED in getattr(item, "fixturenames", ())]
    if not shared:
        return
    first = items.index(shared[0])
    rest = [item for item in items if SHARED not in getattr(item, "fixturenames", ())]
    items[:] = [*rest[:first], *shared, *rest[first:]]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    result = yield  # the test's own fixtures first: they may still use the stack
    if _shared.running and SHARED not in getattr(nextitem, "fixturenames", ()):
        _shared.stop()
    return result


@pytest.fixture(scope="session", autouse=True)
def _drop_stack_databases() -> Iterator[None]:
    yield
    _shared.stop()  # before its database goes
    drop_created_databases()
