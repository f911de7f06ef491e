"""Which users' rows the current handler transaction has locked.

A user's row (`users`) is the lock under which their slot decisions are made
(`Dispatcher.activate_waiting`). A statement the transaction sends anyway may take it (the
images' insert at admission, a running job's terminal update); noted here, the activation
that follows sends no lock of its own. Outside `tracking_user_locks` nothing is noted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

# The users whose row (`users`, the lock of their slot decisions) the current handler
# transaction holds already; None outside one (then every activation locks it itself).
_LOCKED_USERS: ContextVar[set[str] | None] = ContextVar("scheduler_locked_users", default=None)


@contextlib.contextmanager
def tracking_user_locks() -> Iterator[None]:
    """Within: `user_locked` remembers the users whose row this transaction locked."""
    token = _LOCKED_USERS.set(set())
    try:
        yield
    finally:
        _LOCKED_USERS.reset(token)


def note_user_locked(user_id: str) -> None:
    """The current transaction holds `user_id`'s row now (nothing outside `tracking_user_locks`)."""
    locked = _LOCKED_USERS.get()
    if locked is not None:
        locked.add(user_id)


def user_locked(user_id: str) -> bool:
    """Whether the current transaction holds `user_id`'s row (a lock held to its end)."""
    locked = _LOCKED_USERS.get()
    return locked is not None and user_id in locked
