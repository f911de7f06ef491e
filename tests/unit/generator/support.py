"""Shared pieces of the generator's worker tests: jobs, records, a scripted backend."""

from __future__ import annotations

import io
import threading
import uuid
from dataclasses import dataclass, field

from PIL import Image

from imagegen.kafka import Record
from imagegen.kafka.memory import InMemoryBroker
from schemas.characters import CharacterSpec
from schemas.events import EVENT_ADAPTER, EventBase
from schemas.jobs import GenerateImage, ImageIdentity, image_id_for
from schemas.topics import Tier, TopicNames
from services.generator.backends import CancelToken, GeneratedImage, GenerationRequest
from services.generator.backends.base import hourly_cost


def make_job(tier: Tier = Tier.REALTIME, index: int = 0, **fields: object) -> GenerateImage:
    job_id = str(fields.pop("job_id", uuid.uuid4()))
    character = fields.pop("character", CharacterSpec(id="char-1", name="Mira", seed=1234))
    values: dict[str, object] = {
        "image": ImageIdentity(
            job_id=job_id,
            image_id=image_id_for(job_id, index),
            image_index=index,
            image_count=index + 1,
            user_id="alice",
            character_id="char-1",
        ),
        "tier": tier,
        "character": character,
        "prompt": "a portrait",
        "seed": 7 + index,
        "width": 64,
        "height": 64,
        "steps": 4,
    }
    values.update(fields)
    return GenerateImage.model_validate(values)


def record_of(job: GenerateImage, topics: TopicNames, offset: int = 0) -> Record:
    return Record(
        topics.jobs(job.tier), 0, offset, job.image.job_id, job.model_dump_json().encode()
    )


def events(broker: InMemoryBroker, topics: TopicNames) -> list[EventBase]:
    return [EVENT_ADAPTER.validate_json(r.value) for r in broker.records(topics.events)]


def of_type(broker: InMemoryBroker, topics: TopicNames, event_type: str) -> list[EventBase]:
    return [e for e in events(broker, topics) if e.type == event_type]  # type: ignore[attr-defined]


@dataclass
class ScriptedBackend:
    """Solid squares after `steps` progress calls; raises `error` when given one."""

    name: str = "demo"
    model: str = "scripted"
    seconds: float = 1.8
    price_per_hour: float = 2.0
    error: Exception | None = None
    calls: list[GenerationRequest] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)

    def load(self) -> None:
        pass

    def generate(
        self, request: GenerationRequest, on_progress: object, cancel: CancelToken
    ) -> GeneratedImage:
        self.calls.append(request)
        self.started.set()
        if self.error is not None:
            raise self.error
        for step in range(1, request.steps + 1):
            on_progress(step, request.steps)  # type: ignore[operator]
        buf = io.BytesIO()
        Image.new("RGB", (request.width, request.height), (request.seed % 256, 0, 0)).save(
            buf, "PNG"
        )
        return GeneratedImage(
            png=buf.getvalue(),
            width=request.width,
            height=request.height,
            backend=self.name,
            model=self.model,
            device="cpu",
            versions={},
            demo=False,
            steps_run=request.steps,
            seconds=self.seconds,
        )

    def cost_usd(self, seconds: float) -> float:
        return hourly_cost(seconds, self.price_per_hour)
