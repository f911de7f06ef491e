"""Characters' LoRAs on the tiny SD pipeline: tiny random LoRA files built with peft."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/huggingface_hub read it

import pytest

from services.generator.backends import (
    CancelToken,
    GeneratedImage,
    GenerationRequest,
    InvalidGenerationRequest,
)
from services.generator.backends.base import LoraWeights
from services.generator.backends.diffusers_backend import DiffusersBackend
from services.generator.settings import DiffusersSettings
from tests.fixtures.tiny_lora import build_tiny_lora


def _adapter(path: Path, weight: float = 1.0) -> LoraWeights:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LoraWeights(name=f"lora_{digest[:16]}", path=str(path), weight=weight)


@pytest.fixture(scope="module")
def loras(tiny_sd_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("loras")
    return (
        build_tiny_lora(root / "mira", tiny_sd_path, seed=1),
        build_tiny_lora(root / "tom", tiny_sd_path, seed=2),
    )


@pytest.fixture
def backend(tiny_sd_path: Path) -> DiffusersBackend:
    made = DiffusersBackend(
        str(tiny_sd_path), device="cpu", options=DiffusersSettings(lora_cache_size=2)
    )
    made.load()
    return made


def _request(*loras: LoraWeights) -> GenerationRequest:
    return GenerationRequest(
        prompt="ohwx Mira in a garden",
        negative_prompt="",
        seed=3,
        width=64,
        height=64,
        steps=2,
        guidance=5.0,
        identity_seed=1,
        loras=loras,
    )


def _make(backend: DiffusersBackend, request: GenerationRequest) -> GeneratedImage:
    return backend.generate(request, lambda step, total: None, CancelToken())


def _scalings(backend: DiffusersBackend) -> dict[str, float]:
    """The LoRA scale of each adapter on one of the UNet's attention projections."""
    layer = backend._pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_q
    active = set(layer.active_adapters)
    return {name: float(s) for name, s in layer.scaling.items() if name in active}


def test_a_lora_changes_the_image_and_leaves_no_trace(
    backend: DiffusersBackend, loras: tuple[Path, Path]
) -> None:
    mira = _adapter(loras[0])
    plain = _make(backend, _request())
    with_lora = _make(backend, _request(mira))
    assert with_lora.png != plain.png
    assert with_lora.loras == {mira.name: 1.0} and plain.loras == {}
    # The next image without a LoRA is exactly the image before any LoRA was loaded.
    assert _make(backend, _request()).png == plain.png
    # And the LoRA, still loaded, comes back the same without being loaded again.
    calls: list[str] = []
    original = backend._pipe.load_lora_weights
    backend._pipe.load_lora_weights = lambda *a, **k: calls.append(k["adapter_name"])
    try:
        assert _make(backend, _request(mira)).png == with_lora.png
    finally:
        backend._pipe.load_lora_weights = original
    assert calls == []


def test_two_characters_loras_combine_with_their_weights(
    backend: DiffusersBackend, loras: tuple[Path, Path]
) -> None:
    mira, tom = _adapter(loras[0], 1.0), _adapter(loras[1], 0.5)
    only_mira = _make(backend, _request(mira)).png
    only_tom = _make(backend, _request(tom)).png
    both = _make(backend, _request(mira, tom))
    assert both.loras == {mira.name: 1.0, tom.name: 0.5}
    assert sorted(backend._pipe.get_active_adapters()) == sorted([mira.name, tom.name])
    assert _scalings(backend) == {mira.name: 1.0, tom.name: 0.5}  # alpha / rank = 1, x weight
    assert both.png not in (only_mira, only_tom)
    assert _make(backend, _request(mira, _adapter(loras[1], 1.0))).png != both.png


def test_batches_never_mix_adapter_sets(
    backend: DiffusersBackend, loras: tuple[Path, Path]
) -> None:
    mira, tom = _adapter(loras[0]), _adapter(loras[1])
    key = backend.batch_key
    assert key(_request(mira)) == key(_request(mira))
    assert key(_request(mira, tom)) == key(_request(tom, mira))  # a set: order is no matter
    assert len({key(_request()), key(_request(mira)), key(_request(mira, tom))}) == 3
    assert key(_request(mira)) != key(_request(_adapter(loras[0], 0.5)))
    with pytest.raises(ValueError, match="share a batch key"):
        backend.generate_batch(
            [_request(mira), _request(tom)], [lambda s, t: None] * 2, [CancelToken()] * 2
        )


def test_a_file_that_is_no_lora_is_a_clear_permanent_error(
    backend: DiffusersBackend, tmp_path: Path
) -> None:
    bogus = tmp_path / "not-a-lora.safetensors"
    bogus.write_bytes(b"\x00" * 64)
    with pytest.raises(InvalidGenerationRequest, match="LoRA lora_"):
        _make(backend, _request(_adapter(bogus)))
    assert backend._loras is not None and backend._loras.loaded == ()
