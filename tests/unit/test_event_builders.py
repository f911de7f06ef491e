"""`image_event`: an image's event built from its parts, as the services built it by hand."""

from __future__ import annotations

import pydantic
import pytest

from schemas.events import (
    GenerationFailed,
    GenerationFailedData,
    GenerationQueued,
    event_id,
    image_event,
)
from tests.unit.image_builders import image_identity

IMAGE = image_identity(image_index=2, image_count=5, attempt=3)
FAILED = GenerationFailedData(
    image_id="i",
    image_index=2,
    attempt=3,
    error_type="E",
    error="boom",
    retryable=False,
    final=True,
)


def test_the_envelope_comes_from_the_image_and_the_id_from_the_class_type_and_parts() -> None:
    event = image_event(GenerationFailed, IMAGE, "final", source="imagegen/scheduler", data=FAILED)
    by_hand = GenerationFailed(
        id=event_id("generation_failed", "j", 2, "final"),
        source="imagegen/scheduler",
        subject="jobs/j/images/2",
        job_id="j",
        user_id="u",
        data=FAILED,
        time=event.time,
    )
    assert event == by_hand


def test_the_source_is_left_to_the_emitter_and_the_id_type_may_be_named() -> None:
    event = image_event(GenerationFailed, IMAGE, 3, id_type="attempt_overdue", data=FAILED)
    assert event.source == ""
    assert event.type == "generation_failed"
    assert event.id == event_id("attempt_overdue", "j", 2, 3)
    assert event.id != image_event(GenerationFailed, IMAGE, 3, data=FAILED).id


def test_data_of_another_event_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="data"):
        image_event(GenerationQueued, IMAGE, 3, data=FAILED)
