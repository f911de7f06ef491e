"""Encoding of contracts to message bytes and back."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from imagegen.errors import PoisonMessageError
from imagegen.kafka.ports import Record

T = TypeVar("T")


def encode(value: BaseModel | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.model_dump_json().encode()


def decode(record: Record, adapter: TypeAdapter[T] | type[T]) -> T:
    """Parse a record's value against a contract; anything that does not fit is poison."""
    ta = adapter if isinstance(adapter, TypeAdapter) else TypeAdapter(adapter)
    try:
        return ta.validate_json(record.value)
    except ValidationError as exc:
        raise PoisonMessageError(
            f"{record.topic}[{record.partition}]@{record.offset} does not match its contract: "
            f"{exc.error_count()} error(s), first: {exc.errors()[0]['msg']} at "
            f"{'.'.join(map(str, exc.errors()[0]['loc']))}"
        ) from exc
