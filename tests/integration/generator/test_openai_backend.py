"""The OpenAI backend over real HTTP against the local OpenAI-compatible images server."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image
from pydantic import SecretStr

from imagegen.errors import ConfigurationError, PermanentError, RetryableError
from schemas.events import ErrorType
from services.generator.backends import build_backend
from services.generator.backends.base import (
    CancelToken,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    InvalidGenerationRequest,
)
from services.generator.backends.hosted import ProviderRateLimited, ProviderRetryableError
from services.generator.backends.openai_backend import OpenAIImageBackend
from services.generator.backends.openai_errors import ProviderAuthError, ProviderContentPolicyError
from services.generator.backends.openai_settings import OpenAISettings
from tests.fixtures.http_server import free_port
from tests.fixtures.openai_server import OpenAIImagesServer, running_openai_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def module_server() -> Iterator[OpenAIImagesServer]:
    with running_openai_server() as server:
        yield server


@pytest.fixture
def server(module_server: OpenAIImagesServer) -> OpenAIImagesServer:
    module_server.clear_faults()
    module_server.calls.clear()
    return module_server


def backend_for(server: OpenAIImagesServer, **overrides: object) -> OpenAIImageBackend:
    settings = OpenAISettings(
        api_key=SecretStr(server.api_key), base_url=server.base_url, timeout_s=10.0
    )
    return OpenAIImageBackend(settings.model_copy(update=overrides))


def request(**changes: object) -> GenerationRequest:
    values: dict[str, object] = {
        "prompt": "portrait of Mira, red scarf",
        "negative_prompt": "blurry",
        "seed": 7,
        "width": 96,
        "height": 64,
        "steps": 20,
        "guidance": 5.0,
        "identity_seed": 1234,
        "model": "gpt-image-1",
        "quality": "standard",
        "request_id": "img-1-a1-v0",
    }
    values.update(changes)
    return GenerationRequest(**values)  # type: ignore[arg-type]


def run(backend: OpenAIImageBackend, req: GenerationRequest) -> tuple[GeneratedImage, list[int]]:
    steps: list[int] = []
    result = backend.generate(
        req, lambda step, total: steps.append(step * 10 + total), CancelToken()
    )
    return result, steps


def png(colour: tuple[int, int, int], size: tuple[int, int] = (48, 48), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def pixels(data: bytes) -> tuple[tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size, image.convert("RGB").tobytes()


@pytest.mark.parametrize(
    ("width", "height", "tier", "size", "quality", "price"),
    [
        (96, 64, "draft", "1536x1024", "low", 0.016),
        (64, 64, "standard", "1024x1024", "medium", 0.042),
        (64, 112, "high", "1024x1536", "high", 0.25),
        (1024, 1024, "high", "1024x1024", "high", 0.167),
    ],
)
def test_gpt_image_1_maps_size_and_quality_and_returns_the_exact_size(
    server: OpenAIImagesServer,
    width: int,
    height: int,
    tier: str,
    size: str,
    quality: str,
    price: float,
) -> None:
    result, progress = run(backend_for(server), request(width=width, height=height, quality=tier))

    (call,) = server.calls
    assert call.endpoint == "generations"
    assert call.headers["authorization"] == f"Bearer {server.api_key}"
    assert call.headers["x-client-request-id"] == "img-1-a1-v0"
    assert {k: call.params[k] for k in ("model", "size", "quality", "n", "output_format")} == {
        "model": "gpt-image-1",
        "size": size,
        "quality": quality,
        "n": 1,
        "output_format": "png",
    }
    assert "response_format" not in call.params
    assert call.params["prompt"] == "portrait of Mira, red scarf\n\nAvoid: blurry"
    assert pixels(result.png)[0] == (width, height) == (result.width, result.height)
    assert result.cost_usd == price
    assert result.quality == quality
    assert (result.backend, result.model, result.device, result.conditioning) == (
        "openai",
        "gpt-image-1",
        "api",
        "",
    )
    assert result.versions["size"] == size and result.versions["quality"] == quality
    assert result.versions["openai"].count(".") == 2  # the SDK's version, e.g. 1.2.3
    assert progress == [1, 11]


@pytest.mark.parametrize(
    ("width", "height", "tier", "size", "quality", "price"),
    [
        (64, 64, "draft", "1024x1024", "standard", 0.04),
        (128, 64, "standard", "1792x1024", "standard", 0.08),
        (64, 128, "high", "1024x1792", "hd", 0.12),
    ],
)
def test_dall_e_3_asks_for_base64_with_its_sizes_and_qualities(
    server: OpenAIImagesServer,
    width: int,
    height: int,
    tier: str,
    size: str,
    quality: str,
    price: float,
) -> None:
    backend = backend_for(server)
    result, _ = run(backend, request(model="dall-e-3", width=width, height=height, quality=tier))

    (call,) = server.calls
    assert (call.params["size"], call.params["quality"]) == (size, quality)
    assert (call.params["response_format"], call.params["n"]) == ("b64_json", 1)
    assert pixels(result.png)[0] == (width, height)
    assert result.cost_usd == price
    assert result.model == "dall-e-3"
    assert result.versions["revised_prompt"].endswith("(revised)")


def test_same_request_gives_the_same_pixels_and_the_prompt_changes_them(
    server: OpenAIImagesServer,
) -> None:
    backend = backend_for(server)
    first, _ = run(backend, request())
    again, _ = run(backend, request())
    other, _ = run(backend, request(prompt="portrait of Mira, blue scarf"))
    assert first.png == again.png
    assert pixels(first.png) != pixels(other.png)


def test_gpt_image_1_edits_with_the_reference_images(server: OpenAIImagesServer) -> None:
    red, blue = png((200, 20, 20)), png((20, 20, 200), fmt="JPEG")
    backend = backend_for(server)
    result, _ = run(backend, request(reference_images=(red, blue), width=64, height=64))

    (call,) = server.calls
    assert call.endpoint == "edits"
    assert call.params["_image_types"] == ["image/png", "image/png"]  # the JPEG is sent as PNG
    assert [pixels(i) for i in call.images] == [pixels(red), pixels(blue)]
    assert (call.params["model"], call.params["input_fidelity"]) == ("gpt-image-1", "high")
    assert result.conditioning == "edit"
    assert result.versions["endpoint"] == "images.edit"
    assert result.versions["references"] == "2"
    assert result.cost_usd == 0.042
    # The edit follows the references: other references, another image.
    other, _ = run(backend, request(reference_images=(blue,), width=64, height=64))
    assert pixels(other.png) != pixels(result.png)


def test_dall_e_3_has_no_edits_and_draws_from_the_prompt(server: OpenAIImagesServer) -> None:
    result, _ = run(
        backend_for(server), request(model="dall-e-3", reference_images=(png((1, 2, 3)),))
    )
    (call,) = server.calls
    assert call.endpoint == "generations"
    assert result.conditioning == ""
    assert result.versions["references"] == "0"


def test_registry_builds_it_from_the_environment_with_price_overrides(
    server: OpenAIImagesServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEGEN_OPENAI_API_KEY", server.api_key)
    monkeypatch.setenv("IMAGEGEN_OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("IMAGEGEN_OPENAI_MODEL", "dall-e-3")
    monkeypatch.setenv(
        "IMAGEGEN_OPENAI_PRICES", '{"dall-e-3": {"standard": {"1024x1024": "0.05"}}}'
    )
    backend = build_backend("openai", None)
    backend.load()
    assert (backend.name, backend.model, getattr(backend, "self_hosted", True)) == (
        "openai",
        "dall-e-3",
        False,
    )
    result = backend.generate(
        request(model=None, width=64, height=64), lambda s, t: None, CancelToken()
    )
    assert (result.model, result.cost_usd) == ("dall-e-3", 0.05)
    assert backend.cost_usd(30.0) == 0.0


def test_missing_key_is_a_configuration_error_naming_the_setting_without_network(
    server: OpenAIImagesServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGEGEN_OPENAI_API_KEY", raising=False)
    backend = OpenAIImageBackend(OpenAISettings(base_url=server.base_url))
    with pytest.raises(ConfigurationError, match="IMAGEGEN_OPENAI_API_KEY"):
        backend.load()
    with pytest.raises(ConfigurationError, match="IMAGEGEN_OPENAI_PRICES"):
        backend_for(server, prices='{"gpt-image-1": {"high": {"1024x1024": -1}}}').load()
    with pytest.raises(ConfigurationError, match="IMAGEGEN_OPENAI_MODEL"):
        backend_for(server, model="dall-e-2").load()
    assert server.calls == []


def test_wrong_key_is_permanent_and_names_the_setting(server: OpenAIImagesServer) -> None:
    backend = OpenAIImageBackend(
        OpenAISettings(api_key=SecretStr("sk-wrong"), base_url=server.base_url)
    )
    with pytest.raises(ProviderAuthError) as caught:
        run(backend, request())
    assert isinstance(caught.value, PermanentError)
    assert "HTTP 401" in str(caught.value) and "IMAGEGEN_OPENAI_API_KEY" in str(caught.value)
    assert "Incorrect API key" in str(caught.value)


def test_server_errors_and_rate_limits_are_retryable(server: OpenAIImagesServer) -> None:
    backend = backend_for(server)
    server.fail_next(1, status=503)
    server.rate_limit_next(1, retry_after_s=3)
    with pytest.raises(ProviderRetryableError, match=r"openai: HTTP 503: The server had an error"):
        run(backend, request())
    with pytest.raises(ProviderRateLimited) as limited:
        run(backend, request())
    assert (limited.value.status, limited.value.retry_after_s) == (429, 3.0)
    assert "rate_limit_exceeded" in str(limited.value)
    # The SDK does not retry by itself (the scheduler does): one call per attempt.
    assert len(server.calls) == 2
    result, _ = run(backend, request())  # the faults are spent: the next call works
    assert result.width == 96


def test_timeouts_and_refused_connections_are_retryable(server: OpenAIImagesServer) -> None:
    server.slow_next(1, delay_s=1.0)
    with pytest.raises(ProviderRetryableError, match="timed out"):
        run(backend_for(server, timeout_s=0.2), request())
    closed = OpenAIImageBackend(
        OpenAISettings(api_key=SecretStr("k"), base_url=f"http://127.0.0.1:{free_port()}/v1")
    )
    with pytest.raises(RetryableError, match="connection failed"):
        run(closed, request())


def test_content_policy_refusal_is_permanent(server: OpenAIImagesServer) -> None:
    server.refuse_next(1)
    with pytest.raises(ProviderContentPolicyError) as caught:
        run(backend_for(server), request(model="dall-e-3"))
    assert isinstance(caught.value, PermanentError)
    assert "HTTP 400 content_policy_violation" in str(caught.value)
    assert "refused by its safety system" in str(caught.value)
    # What the worker reports as the attempt's error_type: the scheduler's cue to stop.
    assert caught.value.error_type == ErrorType.CONTENT_POLICY_VIOLATION.value
    assert caught.value.error_type == "ContentPolicyViolation"
    assert len(server.calls) == 1


def test_gpt_image_moderation_block_is_a_content_policy_refusal(
    server: OpenAIImagesServer,
) -> None:
    server.refuse_next(1, code="moderation_blocked")
    with pytest.raises(ProviderContentPolicyError) as caught:
        run(backend_for(server), request())
    message = str(caught.value)
    assert message.startswith("openai: HTTP 400 moderation_blocked: refused by its safety system")
    assert "safety_violations=[violence]" in message
    assert message.endswith("(stage: input; categories: violence)")
    assert (caught.value.status, caught.value.error_type) == (400, "ContentPolicyViolation")


def test_other_bad_requests_are_permanent_but_not_refusals(server: OpenAIImagesServer) -> None:
    # A 400 without a refusal code is a request OpenAI cannot serve; another provider may.
    server.fail_next(1, status=400)
    with pytest.raises(PermanentError, match="openai: HTTP 400") as caught:
        run(backend_for(server), request())
    assert not isinstance(caught.value, ProviderContentPolicyError)
    assert not hasattr(caught.value, "error_type")


def test_unknown_model_is_permanent_and_names_the_known_ones(server: OpenAIImagesServer) -> None:
    with pytest.raises(InvalidGenerationRequest, match=r"'sdxl'.*dall-e-3, gpt-image-1"):
        run(backend_for(server), request(model="sdxl"))
    assert server.calls == []


def test_cancel_before_the_call_sends_nothing(server: OpenAIImagesServer) -> None:
    token = CancelToken()
    token.set()
    with pytest.raises(GenerationCancelled):
        backend_for(server).generate(request(), lambda s, t: None, token)
    assert server.calls == []


def test_cancel_during_the_call_discards_the_image(server: OpenAIImagesServer) -> None:
    token = CancelToken()
    # Set once the request is about to go: the call completes, its image is dropped.
    with pytest.raises(GenerationCancelled, match="in flight"):
        backend_for(server).generate(request(), lambda step, total: token.set(), token)
    assert len(server.calls) == 1
