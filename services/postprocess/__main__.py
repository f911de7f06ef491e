"""`python -m services.postprocess`: renditions for every generated image."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from imagegen.blobstore import S3BlobStore
from imagegen.runtime import consumer_loop, kafka_publisher, run_until_signalled
from imagegen.telemetry import configure_logging, configure_tracing
from services.postprocess.handlers import Postprocessor
from services.postprocess.settings import PostprocessSettings


async def serve(settings: PostprocessSettings) -> None:
    topics = settings.kafka.topics
    async with AsyncExitStack() as stack:
        blobs = await stack.enter_async_context(S3BlobStore(settings.s3))
        publisher = kafka_publisher(settings.kafka, "postprocess")
        stack.push_async_callback(publisher.close)
        worker = Postprocessor(settings, blobs, publisher, topics)
        loop = consumer_loop(
            settings.kafka, "postprocess", {topics.images_raw: worker.on_raw_image}, publisher
        )
        await run_until_signalled([loop])


def main() -> None:
    settings = PostprocessSettings()
    configure_logging("postprocess", settings.log_level)
    configure_tracing("postprocess")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
