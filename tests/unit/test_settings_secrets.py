"""Production refuses the dev S3 key, but only in services that use the object store."""

from __future__ import annotations

import pytest

from imagegen.errors import ConfigurationError
from services.generator.settings import GeneratorSettings
from services.scheduler.settings import SchedulerSettings
from services.storage.settings import StorageSettings


@pytest.mark.parametrize("settings", [StorageSettings, GeneratorSettings])
def test_a_service_using_s3_refuses_the_dev_key_in_prod(settings: type) -> None:
    with pytest.raises(ConfigurationError, match="IMAGEGEN_S3_SECRET_KEY must be set"):
        settings(env="prod")


def test_the_scheduler_needs_no_s3_key_in_prod() -> None:
    # Its manifest mounts no S3 secret (deploy/k8s/base/scheduler.yaml).
    assert SchedulerSettings(env="prod").env == "prod"
