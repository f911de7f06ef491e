"""The backends this generator holds, keyed by provider name (DECISIONS.md #1).

The scheduler writes `job.provider`; None means this generator's default. A provider the
generator does not hold fails the attempt (permanently for this pod: another provider in
the scheduler's failover chain may have it).
"""

from __future__ import annotations

from collections.abc import Mapping

from imagegen.errors import ConfigurationError, PermanentError
from services.generator.backends import ImageBackend, build_backend
from services.generator.settings import BackendSettings


class ProviderUnavailable(PermanentError):
    """The job names a provider this generator does not run."""


class Providers:
    """Backends by provider name, with a default for jobs that name none."""

    def __init__(self, backends: Mapping[str, ImageBackend], default: str) -> None:
        if default not in backends:
            raise ConfigurationError(
                f"default provider {default!r} is not among the providers {sorted(backends)}"
            )
        self._backends = dict(backends)
        self.default = default

    @classmethod
    def single(cls, backend: ImageBackend) -> Providers:
        """One backend under its own name (tests, single-model pods)."""
        return cls({backend.name: backend}, backend.name)

    @property
    def names(self) -> list[str]:
        return sorted(self._backends)

    def backends(self) -> list[ImageBackend]:
        return list(self._backends.values())

    def resolve(self, provider: str | None) -> tuple[str, ImageBackend]:
        """The provider name and backend for a job's `provider` field."""
        name = provider or self.default
        backend = self._backends.get(name)
        if backend is None:
            raise ProviderUnavailable(
                f"provider {name!r} is not available on this generator (it runs {self.names})"
            )
        return name, backend


def build_providers(config: BackendSettings) -> Providers:
    """Every provider of `IMAGEGEN_GENERATOR_PROVIDERS` plus the default backend, not loaded."""
    names = config.provider_names()
    backends = {
        name: build_backend(
            name,
            config.model,
            device=config.device,
            gpu_price_per_hour=config.gpu_price_per_hour,
        )
        for name in names
    }
    return Providers(backends, config.backend)
