"""The price catalogue: cheapest offer meeting the quality, failover order, exact estimates."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from imagegen.errors import ConfigurationError, PermanentError
from schemas.characters import CharacterSpec
from schemas.jobs import GenerateImage, ImageIdentity
from schemas.requests import Quality
from schemas.topics import Tier
from services.scheduler.catalogue import (
    DEMO_MODEL,
    Catalogue,
    NoOfferError,
    Offer,
    assign,
    estimate,
    single_backend_catalogue,
)


def _gpu(
    provider: str, model: str, quality: Quality, per_mp_step: str, overhead: str = "0"
) -> Offer:
    return Offer(
        provider=provider,
        model=model,
        quality=quality,
        gpu_price_per_hour_usd=Decimal("3.60"),  # 0.001 USD per second: easy arithmetic
        seconds_per_megapixel_step=Decimal(per_mp_step),
        overhead_seconds=Decimal(overhead),
    )


@pytest.fixture
def catalogue() -> Catalogue:
    return Catalogue(
        [
            Offer(
                provider="api",
                model="premium",
                quality=Quality.HIGH,
                price_per_image_usd=Decimal("0.040"),
                price_megapixels=Decimal(1),
            ),
            _gpu("gpu", "big", Quality.HIGH, "1.0"),  # 20 s at 1 MP x 20 steps = 0.020
            _gpu("gpu", "small", Quality.STANDARD, "0.5"),  # 0.010
            _gpu("demo", "toy", Quality.DRAFT, "0", "1"),  # 0.001
        ]
    )


def _models(offers: list[Offer]) -> list[str]:
    return [o.model for o in offers]


def test_chain_is_every_offer_meeting_the_quality_cheapest_first(catalogue: Catalogue) -> None:
    assert _models(catalogue.chain(Quality.DRAFT, width=1000, height=1000, steps=20)) == [
        "toy",
        "small",
        "big",
        "premium",
    ]
    assert _models(catalogue.chain(Quality.STANDARD, width=1000, height=1000, steps=20)) == [
        "small",
        "big",
        "premium",
    ]
    assert _models(catalogue.chain(Quality.HIGH, width=1000, height=1000, steps=20)) == [
        "big",
        "premium",
    ]


def test_order_follows_the_cost_of_the_size_asked_for(catalogue: Catalogue) -> None:
    # At 4 MP x 50 steps the GPU model costs 0.200 and the flat-priced API 0.160: it wins.
    chain = catalogue.chain(Quality.HIGH, width=2000, height=2000, steps=50)
    assert _models(chain) == ["premium", "big"]


def test_pinned_model_restricts_the_chain(catalogue: Catalogue) -> None:
    assert _models(catalogue.chain(Quality.STANDARD, "premium")) == ["premium"]
    assert _models(catalogue.chain(Quality.DRAFT, "small")) == ["small"]


def test_nothing_meets_the_request_is_a_permanent_error_naming_it(catalogue: Catalogue) -> None:
    with pytest.raises(NoOfferError, match="'high' with model 'small'") as info:
        catalogue.chain(Quality.HIGH, "small")
    assert isinstance(info.value, PermanentError)
    with pytest.raises(NoOfferError, match="'standard' with model 'nope'"):
        catalogue.chain(Quality.STANDARD, "nope")
    drafts_only = Catalogue([_gpu("demo", "toy", Quality.DRAFT, "0", "1")])
    with pytest.raises(NoOfferError, match="no provider offers quality 'standard'"):
        drafts_only.chain(Quality.STANDARD)


def test_ties_prefer_the_lower_quality_then_names() -> None:
    a = _gpu("b-provider", "m", Quality.HIGH, "1")
    b = _gpu("a-provider", "m", Quality.HIGH, "1")
    c = _gpu("z", "m2", Quality.STANDARD, "1")
    assert [o.provider for o in Catalogue([a, b, c]).chain(Quality.STANDARD)] == [
        "z",
        "a-provider",
        "b-provider",
    ]


def test_gpu_estimate_is_price_per_hour_times_seconds_to_the_micro_dollar() -> None:
    offer = Offer(
        provider="gpu",
        model="m",
        quality=Quality.STANDARD,
        gpu_price_per_hour_usd=Decimal("2.50"),
        seconds_per_megapixel_step=Decimal("0.08"),
        overhead_seconds=Decimal("0.5"),
    )
    # 512x512 = 0.262144 MP; 0.5 + 0.08 * 0.262144 * 20 = 0.9194304 s; x 2.5 / 3600
    # = 0.000638493... USD, rounded up so a reservation never falls short.
    assert estimate(offer, 512, 512, 20) == Decimal("0.000639")
    assert estimate(offer, 512, 512, 20).as_tuple().exponent == -6
    # 40 steps: 0.5 + 0.08 * 0.262144 * 40 = 1.3388608 s -> 0.00092976 USD.
    assert estimate(offer, 512, 512, 40) == Decimal("0.000930")


def test_api_estimate_is_flat_up_to_the_priced_size_then_pro_rata() -> None:
    offer = Offer(
        provider="openai",
        model="gpt-image-1",
        quality=Quality.HIGH,
        price_per_image_usd=Decimal("0.167"),
    )
    assert estimate(offer, 512, 512, 20) == Decimal("0.167000")
    assert estimate(offer, 1024, 1024, 50) == Decimal("0.167000")
    assert estimate(offer, 1536, 1024, 20) == Decimal("0.250500")


def test_estimates_add_up_exactly() -> None:
    offer = _gpu("gpu", "m", Quality.STANDARD, "0.3", "0.7")
    one = estimate(offer, 768, 432, 20)
    assert sum([one] * 20, Decimal(0)) == one * 20  # Decimal: no float drift in the ledger


def test_offer_needs_exactly_one_price() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Offer(provider="p", model="m", quality=Quality.HIGH)
    with pytest.raises(ValueError, match="exactly one"):
        Offer(
            provider="p",
            model="m",
            quality=Quality.HIGH,
            price_per_image_usd=Decimal(1),
            gpu_price_per_hour_usd=Decimal(1),
        )


def test_default_catalogue_picks_demo_for_drafts_self_hosted_before_the_api() -> None:
    default = Catalogue.from_json(None)
    assert [o.provider for o in default.chain(Quality.DRAFT)][:2] == ["demo", "diffusers"]
    assert default.chain(Quality.DRAFT)[0].model == DEMO_MODEL
    assert estimate(default.chain(Quality.DRAFT)[0], 512, 512, 20) < Decimal("0.0001")
    assert [o.provider for o in default.chain(Quality.STANDARD)] == [
        "diffusers",
        "diffusers",
        "openai",
    ]
    assert [o.model for o in default.chain(Quality.HIGH)] == [
        "stable-diffusion-xl-base-1.0",
        "gpt-image-1",
    ]


def test_setting_value_round_trips_and_accepts_an_offers_object() -> None:
    default = Catalogue.default()
    assert Catalogue.from_json(default.to_json()).offers == default.offers
    text = json.dumps(
        {
            "offers": [
                {"provider": "p", "model": "m", "quality": "draft", "price_per_image_usd": "0.01"}
            ]
        }
    )
    (offer,) = Catalogue.from_json(text).offers
    assert offer.price_per_image_usd == Decimal("0.01")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not JSON"),
        ('"a string"', "list of offers"),
        ("[]", "no offers"),
        (
            '[{"provider": "p", "model": "m", "quality": "ultra", "price_per_image_usd": 1}]',
            "quality",
        ),
        ('[{"provider": "p", "model": "m", "quality": "high"}]', "exactly one"),
        (
            '[{"provider": "p", "model": "m", "quality": "high", "price_per_image_usd": 1},'
            ' {"provider": "p", "model": "m", "quality": "draft", "price_per_image_usd": 2}]',
            "listed twice",
        ),
    ],
)
def test_bad_setting_is_a_configuration_error(text: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Catalogue.from_json(text)


def _job(quality: Quality = Quality.STANDARD) -> GenerateImage:
    return GenerateImage(
        image=ImageIdentity(
            job_id="j", image_id="i", image_index=0, image_count=1, user_id="u", character_id="c"
        ),
        tier=Tier.REALTIME,
        character=CharacterSpec(id="c", name="Ann", seed=1),
        prompt="",
        seed=1,
        width=1000,
        height=1000,
        steps=20,
        quality=quality,
    )


def test_assign_and_choose_fill_provider_model_and_estimate(catalogue: Catalogue) -> None:
    job = assign(_job(), catalogue.chain(Quality.STANDARD)[0])
    assert (job.provider, job.model, job.estimated_cost_usd) == ("gpu", "small", 0.01)
    chain = catalogue.choose(_job(Quality.HIGH))
    assert [(j.provider, j.model) for j in chain] == [("gpu", "big"), ("api", "premium")]
    assert [j.estimated_cost_usd for j in chain] == [0.02, 0.04]
    assert catalogue.find("gpu", "big") == catalogue.offers[1]
    assert catalogue.find("gpu", "nope") is None


def test_local_stack_catalogue_serves_every_quality_with_its_one_backend() -> None:
    local = single_backend_catalogue("demo", DEMO_MODEL)
    for quality in Quality:
        assert [(o.provider, o.model) for o in local.chain(quality)] == [("demo", DEMO_MODEL)]
    assert Catalogue.from_json(local.to_json()).offers == local.offers
