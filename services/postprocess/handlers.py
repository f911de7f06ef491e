"""images.raw -> renditions (to their final keys, or staged while held back) -> consistency
check -> images.processed."""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import time
from dataclasses import dataclass

from PIL import Image

from imagegen.blobstore import BlobStore, get_verified
from imagegen.errors import NotFoundError
from imagegen.events import EventEmitter
from imagegen.kafka import Publisher, Record, decode
from imagegen.metrics import instruments
from imagegen.safety import SafetyCheck
from imagegen.telemetry import tracer
from schemas.events import (
    ConsistencyFlagged,
    ConsistencyFlaggedData,
    ErrorType,
    GenerationFailed,
    GenerationFailedData,
    image_envelope,
    image_facts,
)
from schemas.images import ProcessedImage, RawImage
from schemas.topics import TopicNames
from services.postprocess.background import PORTRAIT_KINDS, BackgroundRemover, render_cutout
from services.postprocess.consistency import (
    Assessment,
    ConsistencyScorer,
    Embedding,
    cast_of,
    character_scores,
)
from services.postprocess.outputs import ask_final_exists, write_renditions
from services.postprocess.quality import ImageStatsQualityScorer, Quality, QualityScorer
from services.postprocess.renditions import (
    InvalidImageError,
    QualityCheckError,
    open_image,
    render_image,
    validate,
)
from services.postprocess.settings import PostprocessSettings
from services.postprocess.variations import VariationStore

log = logging.getLogger(__name__)
SOURCE = "imagegen/postprocess"


@dataclass(frozen=True)
class ConsistencyCheck:
    """Scoring plus the memory of scored variations that the consistency loop needs."""

    scorer: ConsistencyScorer
    variations: VariationStore


class Postprocessor:
    def __init__(
        self,
        settings: PostprocessSettings,
        blobs: BlobStore,
        publisher: Publisher,
        topics: TopicNames,
        *,
        consistency: ConsistencyCheck | None = None,
        background: BackgroundRemover | None = None,
        quality: QualityScorer | None = None,
        safety: SafetyCheck | None = None,
    ) -> None:
        self._settings = settings
        self._blobs = blobs
        self._publisher = publisher
        self._topics = topics
        self._consistency = consistency
        self._background = background
        self._quality = quality or ImageStatsQualityScorer()
        self._events = EventEmitter(publisher, topics.events, SOURCE)
        self._safety = safety

    async def on_raw_image(self, record: Record) -> None:
        raw = decode(record, RawImage)
        started = time.monotonic()
        data = await get_verified(self._blobs, raw.blob)
        try:
            # Decoded once: the safety check, the renditions, the cut-out, the quality score
            # and the consistency check all read this one image.
            image = await asyncio.to_thread(open_image, data)
        except InvalidImageError as exc:
            await self._report_unusable(raw, exc)
            return
        if await self._refused(raw, image):
            return  # never stored: a failed attempt the scheduler sees
        try:
            validate(image)
        except QualityCheckError as exc:
            await self._report_unusable(raw, exc)
            return
        # Asked now: the HEAD request overlaps the rendering instead of following it.
        final_exists = ask_final_exists(self._blobs, raw)
        with tracer().start_as_current_span("renditions"):
            rendered, quality = await asyncio.gather(
                asyncio.to_thread(
                    render_image,
                    image,
                    display_quality=self._settings.display_quality,
                    display_max_bytes=self._settings.display_max_bytes,
                    thumbnail_size=self._settings.thumbnail_size,
                    text=raw.overlay_text,
                ),
                self._score_quality(raw, image),
            )
        if self._background is not None and raw.image.kind in PORTRAIT_KINDS:
            cutout = await asyncio.to_thread(render_cutout, image, self._background)
            if cutout is not None:
                rendered.append(cutout)
        with tracer().start_as_current_span("consistency") as span:
            assessment = await self._assess(raw, image)
            score = assessment.score
            if score is not None:
                span.set_attribute("imagegen.consistency_distance", score)
                instruments().consistency_score.record(score)
            elif assessment.not_scored_reason is not None:
                _report_unscored(raw, assessment.not_scored_reason)
        renditions = await write_renditions(
            self._blobs,
            raw,
            data,
            rendered,
            final=not self._held_back(raw, score),
            final_exists=final_exists,
        )
        elapsed_ms = int((time.monotonic() - started) * 1000)
        processed = ProcessedImage(
            image=raw.image,
            renditions=renditions,
            record=raw.record,
            provider=raw.provider,
            cost_usd=raw.cost_usd,
            consistency_score=score,
            character_scores=character_scores(assessment),
            not_scored_reason=assessment.not_scored_reason,
            quality_score=quality.score,
            quality_components=quality.components,
            flagged=self._below_quality_threshold(raw, quality),
            timings=raw.timings.model_copy(update={"postprocess_ms": elapsed_ms}),
            style=raw.style,
            face_embedding=assessment.embedding_list(),
            face_encoder=assessment.encoder if assessment.embedding is not None else "",
        )
        if self._consistency and score is not None and score < self._settings.consistency_threshold:
            chosen = await self._consistency_loop(raw, processed, score, assessment.drifted)
            if chosen is None:
                return
            processed = chosen
        await self._publisher.publish(self._topics.images_processed, raw.image.job_id, processed)

    def _held_back(self, raw: RawImage, score: float | None) -> bool:
        """Whether the consistency loop will hold this image back for another variation
        (its renditions are then staged, not written to the final keys)."""
        return (
            self._consistency is not None
            and score is not None
            and score < self._settings.consistency_threshold
            and raw.image.variation < raw.max_variations
        )

    async def _score_quality(self, raw: RawImage, image: Image.Image) -> Quality:
        with tracer().start_as_current_span("quality") as span:
            quality = await asyncio.to_thread(self._quality.score, image)
            span.set_attribute("imagegen.quality_score", quality.score)
        log.info(
            "event=quality_scored job_id=%s index=%d score=%.4f %s",
            raw.image.job_id,
            raw.image.image_index,
            quality.score,
            " ".join(f"{name}={value:.4f}" for name, value in quality.components.items()),
        )
        return quality

    def _below_quality_threshold(self, raw: RawImage, quality: Quality) -> bool:
        """Flag for review (stored and shown, like a consistency flag) when set and below."""
        threshold = self._settings.quality_review_threshold
        if threshold is None or quality.score >= threshold:
            return False
        log.info(
            "event=quality_flagged job_id=%s index=%d score=%.4f threshold=%.4f",
            raw.image.job_id,
            raw.image.image_index,
            quality.score,
            threshold,
        )
        return True

    async def _refused(self, raw: RawImage, picture: Image.Image) -> bool:
        """The image-safety check, before anything of the image is written: a refused image
        is a failed attempt (ContentPolicyViolation, retryable: a new seed may pass)."""
        if self._safety is None:
            return False
        with tracer().start_as_current_span("safety") as span:
            # The demo backend's GAN draws only faces: its images get the close-up rule
            # without a face search (imagegen/safety.py; it misses some of their faces).
            verdict = await asyncio.to_thread(
                functools.partial(self._safety.check, close_up=raw.record.demo),
                picture,
                raw.image.audience,
            )
            span.set_attribute("imagegen.safety_score", verdict.score)
        if not verdict.refused:
            return False
        image = raw.image
        instruments().images.add(1, {"outcome": "refused", "provider": raw.provider})
        log.warning(
            "event=image_refused job_id=%s index=%d attempt=%d audience=%s score=%.4f"
            " threshold=%.2f",
            image.job_id,
            image.image_index,
            image.attempt,
            image.audience,
            verdict.score,
            verdict.threshold,
        )
        await self._failed_attempt(
            raw, "safety", ErrorType.CONTENT_POLICY_VIOLATION, verdict.reason()
        )
        return True

    async def _report_unusable(self, raw: RawImage, exc: Exception) -> None:
        """An image that fails the output spec is reported as a failed attempt, not stored."""
        image = raw.image
        log.warning(
            "event=image_rejected job_id=%s index=%d error=%s", image.job_id, image.image_index, exc
        )
        await self._failed_attempt(raw, "postprocess", type(exc).__name__, str(exc))

    async def _failed_attempt(self, raw: RawImage, part: str, error_type: str, error: str) -> None:
        """A failed attempt the scheduler decides about (retryable: a new draw may pass);
        `part` keeps the event id apart from the generator's for the same attempt."""
        image = raw.image
        await self._events.emit(
            GenerationFailed(
                **image_envelope(image, "generation_failed", image.attempt, image.variation, part),
                data=GenerationFailedData(
                    image_id=image.image_id,
                    image_index=image.image_index,
                    attempt=image.attempt,
                    error_type=error_type,
                    error=error,
                    retryable=True,
                    final=False,
                    provider=raw.provider,
                    model=raw.record.model,
                    **image_facts(image),
                ),
            )
        )

    async def _assess(self, raw: RawImage, image: Image.Image) -> Assessment:
        """Score against the identity images; portraits and reference images are embedded
        even without any (storage keeps their embedding as the character's reference)."""
        cast = cast_of(raw)
        has_keys = any(keys for _, keys in cast)
        if self._consistency is None or not (has_keys or raw.image.kind in PORTRAIT_KINDS):
            return Assessment(None, None, "")
        scorer = self._consistency.scorer
        loaded = {}
        for key in dict.fromkeys(k for _, keys in cast for k in keys):
            if not scorer.known(key):
                try:
                    loaded[key] = Image.open(io.BytesIO(await self._blobs.get(key)))
                except NotFoundError:
                    log.warning("event=identity_image_missing key=%s", key)
        references: list[tuple[str, Embedding | None]] = [
            (cid, await asyncio.to_thread(scorer.identity_embedding, keys, loaded))
            for cid, keys in cast
        ]
        if not has_keys:  # a reference image being made: embedded, nothing to score yet
            references = []
        return await asyncio.to_thread(scorer.assess_cast, image, references)

    async def _consistency_loop(
        self, raw: RawImage, processed: ProcessedImage, score: float, drifted: list[str]
    ) -> ProcessedImage | None:
        """Hold an inconsistent image back while variations are left; then keep the best."""
        assert self._consistency is not None
        image = raw.image
        final = image.variation >= raw.max_variations
        await self._consistency.variations.record(processed, score)
        await self._events.emit(
            ConsistencyFlagged(
                **image_envelope(
                    image, "consistency_flagged", image.version, image.variation, image.attempt
                ),
                data=ConsistencyFlaggedData(
                    image_id=image.image_id,
                    image_index=image.image_index,
                    version=image.version,
                    variation=image.variation,
                    score=score,
                    threshold=self._settings.consistency_threshold,
                    final=final,
                    characters=drifted,
                ),
            )
        )
        log.info(
            "event=consistency_flagged job_id=%s index=%d variation=%d score=%.3f final=%s"
            " characters=%s",
            image.job_id,
            image.image_index,
            image.variation,
            score,
            final,
            ",".join(drifted),
        )
        if not final:
            return None
        best = await self._consistency.variations.best(image)
        return best.model_copy(update={"flagged": True})


def _report_unscored(raw: RawImage, reason: str) -> None:
    """Counted and logged: an unscored image must never pass silently."""
    instruments().consistency_unscored.add(1, {"reason": reason})
    log.warning(
        "event=consistency_not_scored job_id=%s index=%d reason=%r",
        raw.image.job_id,
        raw.image.image_index,
        reason,
    )
