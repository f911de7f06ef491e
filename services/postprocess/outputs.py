"""Where one image's renditions are written: straight to their final keys, or staged.

Final keys (`imagegen.object_layout`) are a pure function of the image's identity, so an
image on its way to storage has every rendition, the original included, PUT once where it
stays, with its Cache-Control; storage then only records it (no server-side copies). A
final object is never seen half-written (a PUT replaces an object whole) and nothing
points at it before storage's row does; PUTting again on a redelivery writes the same
bytes. Finals that no row ever points at (a crash before storage, a job cancelled in
between) are removed by `imagegen storage cleanup` as orphans, like a crash between copy
and insert left them before.

Renditions are staged instead (content-addressed under `staging/`, expired by the bucket's
lifecycle rule; storage copies them to the finals when it stores the image):
- while the consistency loop holds an image back: it may never be stored, and all of an
  image's variations share the same final keys;
- when the image's final original exists already: another copy of this image version was
  finalised, or started to be (a generation run again after a crash, with other bytes).
  Writing over it would change what storage recorded; staged, storage decides (it copies
  when no row exists yet and keeps the stored image when one does). One HEAD per image
  pays for that check.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable

from imagegen.blobstore import BlobStore, put_staging
from imagegen.object_layout import CACHE_CONTROL, rendition_key
from schemas.images import BlobRef, RawImage, Rendition
from services.postprocess.renditions import RenderedImage

log = logging.getLogger(__name__)


async def _put_final(blobs: BlobStore, key: str, data: bytes, content_type: str) -> BlobRef:
    await blobs.put(key, data, content_type, cache_control=CACHE_CONTROL)
    digest = hashlib.sha256(data).hexdigest()
    return BlobRef(key=key, size=len(data), sha256=digest, content_type=content_type)


def ask_final_exists(blobs: BlobStore, raw: RawImage) -> asyncio.Future[bool]:
    """Whether the image's final original is written already (a redelivery), asked in a task
    of its own: started before rendering, its request overlaps the CPU work instead of
    following it. Its error is read by whoever awaits it (a handler that failed first, or
    staged the image, never does)."""
    task = asyncio.ensure_future(blobs.exists(rendition_key(raw.image, "original", "png")))
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return task


async def write_renditions(
    blobs: BlobStore,
    raw: RawImage,
    original: bytes,
    rendered: list[RenderedImage],
    *,
    final: bool,
    final_exists: Awaitable[bool] | None = None,
) -> list[Rendition]:
    """Write `rendered` (and the original, when final) and return the renditions' claim
    checks, the original first. `final=False` stages them (the image is held back).
    `final_exists`: `ask_final_exists`'s answer, when the caller asked it beforehand."""
    image = raw.image
    original_key = rendition_key(image, "original", "png")
    if final_exists is None:
        final_exists = blobs.exists(original_key) if final else None
    if final and final_exists is not None and await final_exists:
        log.info(
            "event=renditions_staged reason=final_exists image_id=%s version=%d",
            image.image_id,
            image.version,
        )
        final = False
    if final:
        refs = await asyncio.gather(
            _put_final(blobs, original_key, original, raw.blob.content_type),
            *(
                _put_final(blobs, rendition_key(image, r.name, r.format), r.data, r.content_type)
                for r in rendered
            ),
        )
        original_ref, rendered_refs = refs[0], refs[1:]
    else:
        original_ref = raw.blob
        rendered_refs = list(
            await asyncio.gather(*(put_staging(blobs, r.data, r.content_type) for r in rendered))
        )
    return [
        Rendition(
            name="original", blob=original_ref, width=raw.width, height=raw.height, format="png"
        ),
        *(
            Rendition(name=r.name, blob=ref, width=r.width, height=r.height, format=r.format)
            for r, ref in zip(rendered, rendered_refs, strict=True)
        ),
    ]
