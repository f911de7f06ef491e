"""Replicate, fal.ai and RunPod backends against local servers that speak their APIs."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image

from services.generator.backends import (
    CancelToken,
    GenerationCancelled,
    GenerationRequest,
    fal_backend,
    replicate_backend,
    runpod_backend,
)
from services.generator.backends.hosted import (
    HostedBackend,
    HostedSettings,
    ProviderContentPolicyError,
    ProviderPermanentError,
    ProviderRateLimited,
    ProviderRetryableError,
)
from tests.fixtures.http_server import free_port
from tests.fixtures.provider_servers import ProviderState, Script, render_png, serve_provider

PROVIDERS = ["replicate", "fal", "runpod"]
MODELS = {"replicate": "acme/portrait-xl", "fal": "fal-ai/flux/dev", "runpod": "ep-sdxl"}


@dataclass
class Adapter:
    kind: str
    url: str
    state: ProviderState

    def backend(self, **overrides: Any) -> HostedBackend:
        fields: dict[str, Any] = {
            "api_key": "test-key",
            "base_url": self.url,
            "model": MODELS[self.kind],
            "prices": {MODELS[self.kind]: 0.0123},
            "poll_interval_s": 0.01,
            "poll_interval_max_s": 0.03,
            "timeout_s": 20,
            **overrides,
        }
        if self.kind == "replicate":
            return replicate_backend.build(replicate_backend.ReplicateSettings(**fields))
        if self.kind == "fal":
            return fal_backend.build(fal_backend.FalSettings(**fields))
        return runpod_backend.build(runpod_backend.RunPodSettings(**fields))

    def submitted_input(self) -> dict[str, Any]:
        body = self.state.submits()[-1].body
        assert isinstance(body, dict)
        return body if self.kind == "fal" else body["input"]


@pytest.fixture(scope="module", params=PROVIDERS)
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, ProviderState]]:
    with serve_provider(request.param) as (url, state):
        yield request.param, url, state


@pytest.fixture
def adapter(served: tuple[str, str, ProviderState]) -> Adapter:
    kind, url, state = served
    state.reset()
    return Adapter(kind, url, state)


def make_request(**overrides: Any) -> GenerationRequest:
    fields: dict[str, Any] = {
        "prompt": "a red fox in a snowy forest",
        "negative_prompt": "blurry",
        "seed": 4242,
        "width": 64,
        "height": 48,
        "steps": 4,
        "guidance": 5.5,
        "identity_seed": 1,
        "request_id": "img-1-a1-v0",
        **overrides,
    }
    return GenerationRequest(**fields)


def run(
    backend: HostedBackend,
    request: GenerationRequest | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    cancel: CancelToken | None = None,
) -> tuple[Any, list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []

    def progress(step: int, total: int) -> None:
        seen.append((step, total))
        if on_progress is not None:
            on_progress(step, total)

    result = backend.generate(request or make_request(), progress, cancel or CancelToken())
    return result, seen


def test_success_maps_the_input_and_returns_the_exact_size_with_its_cost(adapter: Adapter) -> None:
    # The provider rounds sizes (answers 128x96 for 64x48): the output is fitted back.
    adapter.state.reset(Script(output_size=(128, 96)))
    result, progress = run(adapter.backend())

    sent = adapter.submitted_input()
    assert sent["prompt"] == "a red fox in a snowy forest"
    assert sent["negative_prompt"] == "blurry"
    assert sent["seed"] == 4242
    assert sent["num_inference_steps"] == 4
    assert sent["guidance_scale"] == 5.5
    size = sent["image_size"] if adapter.kind == "fal" else sent
    assert (size["width"], size["height"]) == (64, 48)
    assert "image" not in sent and "image_url" not in sent  # no references, no field

    image = Image.open(io.BytesIO(result.png))
    assert image.format == "PNG"
    assert image.size == (64, 48) == (result.width, result.height)
    expected = Image.open(io.BytesIO(render_png(sent["prompt"], 4242, 128, 96))).convert("RGB")
    # Same picture, scaled: the centre pixel matches the provider's centre closely.
    got, want = image.getpixel((32, 24)), expected.getpixel((64, 48))
    assert all(abs(a - b) <= 8 for a, b in zip(got, want, strict=True))  # type: ignore[arg-type]
    assert result.cost_usd == 0.0123
    assert result.backend == adapter.kind and result.model == MODELS[adapter.kind]
    assert progress[-1] == (4, 4)
    assert adapter.state.jobs  # the job exists at the provider
    job_id = next(iter(adapter.state.jobs))
    assert result.versions["provider_job"] == job_id


def test_slow_start_polls_until_done_and_reports_progress(adapter: Adapter) -> None:
    adapter.state.reset(Script(queued_polls=4, running_polls=3))
    result, progress = run(adapter.backend(), make_request(steps=8))
    job = next(iter(adapter.state.jobs.values()))
    assert job.polls >= 4 + 3 + 1
    steps = [s for s, _ in progress]
    assert steps == sorted(steps) and len(steps) >= 3, progress
    assert progress[-1] == (8, 8)
    assert result.width == 64


def test_a_failed_job_is_permanent_with_the_providers_message(adapter: Adapter) -> None:
    adapter.state.reset(Script(outcome="fail", error="NSFW content detected"))
    with pytest.raises(ProviderPermanentError) as caught:
        run(adapter.backend())
    assert adapter.kind in str(caught.value) and "NSFW content detected" in str(caught.value)
    # Free text written by the model is not a documented refusal: it may fail over.
    assert not isinstance(caught.value, ProviderContentPolicyError)


def test_server_errors_are_retryable(adapter: Adapter) -> None:
    adapter.state.reset(Script(submit_errors=[(503, {})]))
    with pytest.raises(ProviderRetryableError) as caught:
        run(adapter.backend())
    assert caught.value.status == 503 and "HTTP 503" in str(caught.value)
    assert len(adapter.state.submits()) == 1  # a 5xx may have taken the job: not re-sent


def test_polls_survive_transient_errors(adapter: Adapter) -> None:
    adapter.state.reset(Script(running_polls=2, poll_errors=[502, 429]))
    result, _ = run(adapter.backend())
    assert result.height == 48


def test_rate_limit_beyond_the_wait_limit_is_retryable_at_once(adapter: Adapter) -> None:
    adapter.state.reset(Script(submit_errors=[(429, {"Retry-After": "30"})]))
    with pytest.raises(ProviderRateLimited) as caught:
        run(adapter.backend(rate_limit_wait_max_s=5))
    assert caught.value.retry_after_s == 30
    assert isinstance(caught.value, ProviderRetryableError)
    assert len(adapter.state.submits()) == 1


def test_cancel_mid_run_calls_the_providers_cancel(adapter: Adapter) -> None:
    adapter.state.reset(Script(outcome="hang", running_polls=1))
    token = CancelToken()
    with pytest.raises(GenerationCancelled):
        run(adapter.backend(), on_progress=lambda step, total: token.set(), cancel=token)
    job = next(iter(adapter.state.jobs.values()))
    assert job.cancelled
    assert [c.path for c in adapter.state.cancels()] and job.id in adapter.state.cancels()[0].path


def test_deadline_cancels_the_job_and_is_retryable(adapter: Adapter) -> None:
    adapter.state.reset(Script(outcome="hang"))
    with pytest.raises(ProviderRetryableError, match="not done within"):
        run(adapter.backend(timeout_s=0.3))
    assert next(iter(adapter.state.jobs.values())).cancelled


def test_bad_key_is_permanent_and_names_the_setting(adapter: Adapter) -> None:
    with pytest.raises(ProviderPermanentError) as caught:
        run(adapter.backend(api_key="wrong-key"))
    assert caught.value.status == 401
    assert f"IMAGEGEN_{adapter.kind.upper()}_API_KEY" in str(caught.value)
    assert not adapter.state.jobs


def test_references_are_sent_as_data_uris(adapter: Adapter) -> None:
    reference = render_png("face", 1, 32, 32)
    field = {"replicate": "image", "fal": "image_url", "runpod": "input_image"}[adapter.kind]
    backend = adapter.backend(reference_field=field, extra_input={"style": "storybook"})
    run(backend, make_request(reference_images=(reference,), img2img_strength=0.6))
    sent = adapter.submitted_input()
    assert sent[field].startswith("data:image/png;base64,")
    import base64

    assert base64.b64decode(sent[field].split(",", 1)[1]) == reference
    assert sent["style"] == "storybook"


def test_unreachable_provider_is_retryable(adapter: Adapter) -> None:
    backend = adapter.backend(base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ProviderRetryableError, match="failed"):
        run(backend)


def test_missing_key_is_a_configuration_error_naming_the_setting(adapter: Adapter) -> None:
    from imagegen.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=f"IMAGEGEN_{adapter.kind.upper()}_API_KEY"):
        adapter.backend(api_key=None)


# --- provider specifics -----------------------------------------------------------------


@pytest.fixture(scope="module")
def runpod_server() -> Iterator[tuple[str, ProviderState]]:
    with serve_provider("runpod") as served:
        yield served


def test_rate_limit_within_the_limit_is_waited_out(
    runpod_server: tuple[str, ProviderState],
) -> None:
    url, state = runpod_server
    state.reset(Script(submit_errors=[(429, {"Retry-After": "1"})]))
    result, _ = run(Adapter("runpod", url, state).backend())
    first, second = state.submits()
    assert second.at - first.at >= 0.95  # Retry-After honoured before re-sending
    assert result.width == 64


def test_runpod_retries_a_timed_out_job_with_retry(
    runpod_server: tuple[str, ProviderState],
) -> None:
    url, state = runpod_server
    state.reset(Script(outcome="timeout", outcome_after_retry="succeed", runpod_output="base64"))
    result, _ = run(Adapter("runpod", url, state).backend())
    job = next(iter(state.jobs.values()))
    assert job.retries == 1 and len(state.submits()) == 1
    assert any("/retry/" in c.path for c in state.calls)
    assert result.height == 48


def test_runpod_timeout_without_retries_left_is_retryable(
    runpod_server: tuple[str, ProviderState],
) -> None:
    url, state = runpod_server
    state.reset(Script(outcome="timeout"))
    with pytest.raises(ProviderRetryableError, match="timed out"):
        run(Adapter("runpod", url, state).backend(provider_retries=0))


def test_replicate_sync_mode_answers_in_the_create_call() -> None:
    with serve_provider("replicate") as (url, state):
        backend = Adapter("replicate", url, state).backend(sync_wait_s=5)
        result, progress = run(backend)
        assert state.submits()[0].headers.get("prefer") == "wait=5"
        assert not [c for c in state.calls if c.path.startswith("/v1/predictions/")]
        assert progress[-1] == (4, 4) and result.width == 64


def test_replicate_version_pinned_model_uses_the_versions_endpoint() -> None:
    with serve_provider("replicate") as (url, state):
        run(Adapter("replicate", url, state).backend(model="acme/portrait-xl:abc123"))
        submit = state.submits()[0]
        assert submit.path == "/v1/predictions" and submit.body["version"] == "abc123"


def test_fal_timeout_is_retryable() -> None:
    with serve_provider("fal") as (url, state):
        state.reset(Script(outcome="timeout"))
        with pytest.raises(ProviderRetryableError, match="timed out"):
            run(Adapter("fal", url, state).backend())


def test_fal_content_checker_refusal_is_a_content_policy_error() -> None:
    with serve_provider("fal") as (url, state):
        state.reset(Script(outcome="refuse"))
        secret_prompt = "a prompt the content checker flags"
        with pytest.raises(ProviderContentPolicyError) as caught:
            run(Adapter("fal", url, state).backend(), make_request(prompt=secret_prompt))
        message = str(caught.value)
        assert message.startswith("fal: HTTP 422: refused by its safety system: The content")
        assert message.endswith("(content_policy_violation in prompt)")
        assert secret_prompt not in message, "fal echoes the input; the error must not"
        assert (caught.value.status, caught.value.error_type) == (422, "ContentPolicyViolation")
        assert len(state.submits()) == 1


def test_fal_safety_checker_flag_is_a_content_policy_error_not_an_image() -> None:
    with serve_provider("fal") as (url, state):
        state.reset(Script(fal_nsfw=True))
        with pytest.raises(ProviderContentPolicyError, match="has_nsfw_concepts") as caught:
            run(Adapter("fal", url, state).backend())
        assert caught.value.error_type == "ContentPolicyViolation"
        assert not [c for c in state.calls if "/files/" in c.path], "the image is not fetched"
    clean = {"images": [{"url": "u"}], "has_nsfw_concepts": [False]}
    assert fal_backend.result_snapshot(clean, None).state == "succeeded"


def test_fal_refusal_is_recognised_only_in_its_documented_shape() -> None:
    def answer(status: int, body: object) -> httpx.Response:
        return httpx.Response(status, json=body)

    flagged = {"detail": [{"loc": ["body"], "msg": "flagged", "type": "content_policy_violation"}]}
    assert fal_backend.fal_refusal(answer(422, flagged)) == "flagged (content_policy_violation)"
    missing = {"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]}
    assert fal_backend.fal_refusal(answer(422, missing)) is None
    assert fal_backend.fal_refusal(answer(422, {"detail": "content_policy_violation"})) is None
    assert fal_backend.fal_refusal(httpx.Response(422, text="not json")) is None


def test_settings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_FAL_API_KEY", "k")
    monkeypatch.setenv("IMAGEGEN_FAL_PRICES", '{"fal-ai/flux/schnell": 0.004}')
    monkeypatch.setenv("IMAGEGEN_FAL_REFERENCE_FIELD", "image_urls")
    monkeypatch.setenv("IMAGEGEN_FAL_REFERENCE_AS_LIST", "true")
    settings = fal_backend.FalSettings()
    assert settings.price_of("fal-ai/flux/schnell") == 0.004
    assert settings.references(make_request(reference_images=(b"\x89PNG..",)))["image_urls"]
    assert isinstance(settings, HostedSettings)


def test_catalogue_offers_match_the_prices_the_backends_book() -> None:
    from services.scheduler.catalogue import DEFAULT_OFFERS, HOSTED_OFFERS, Catalogue

    settings: dict[str, HostedSettings] = {
        "replicate": replicate_backend.ReplicateSettings(),
        "fal": fal_backend.FalSettings(),
        "runpod": runpod_backend.RunPodSettings(),
    }
    for offer in HOSTED_OFFERS:
        booked = settings[offer.provider].price_of(offer.model)
        assert booked == float(offer.price_per_image_usd or 0), offer.key
    both = Catalogue([*DEFAULT_OFFERS, *HOSTED_OFFERS])
    assert {o.provider for o in both.offers} >= {"replicate", "fal", "runpod"}
