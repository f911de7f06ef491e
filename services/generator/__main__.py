"""`python -m services.generator`: run the configured model backend over the tier topics."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from imagegen.blobstore import S3BlobStore
from imagegen.runtime import consumer_loop, kafka_publisher, run_until_signalled
from imagegen.telemetry import configure_logging, configure_tracing
from services.generator.backends import build_backend
from services.generator.settings import GeneratorSettings
from services.generator.worker import Generator


async def serve(settings: GeneratorSettings) -> None:
    topics = settings.kafka.topics
    config = settings.generator
    backend = build_backend(
        config.backend,
        config.model,
        device=config.device,
        gpu_price_per_hour=config.gpu_price_per_hour,
    )
    # Load before joining the group: a pod that cannot load its model takes no work.
    await asyncio.to_thread(backend.load)
    async with AsyncExitStack() as stack:
        blobs = await stack.enter_async_context(S3BlobStore(settings.s3))
        publisher = kafka_publisher(settings.kafka, "generator")
        stack.push_async_callback(publisher.close)
        generator = Generator(settings, backend, blobs, publisher, topics)
        job_topics = topics.all_jobs()
        loop = consumer_loop(
            settings.kafka, "generator", {t: generator.on_job for t in job_topics}, publisher
        )
        await run_until_signalled([loop])


def main() -> None:
    settings = GeneratorSettings()
    configure_logging("generator", settings.log_level)
    configure_tracing("generator")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
