"""A content-policy refusal is final for its image: no retry, no failover, budget released.

Other permanent failures still fail over (another provider may serve the request); the
refusal is the prompt's fault, so sending it elsewhere would only pay for it again.
"""

from __future__ import annotations

from decimal import Decimal

from schemas.events import ErrorType, GenerationFailedData, JobStatus
from schemas.jobs import GenerateImage
from services.scheduler.day_totals import balance
from services.scheduler.provider_health import ProviderHealth, counts_against
from tests.unit.scheduler.fakes import Outcome, catalogue_json, fast_settings
from tests.unit.scheduler.memrig import memory_rig, pack

TWO_PROVIDERS = catalogue_json(("flaky", "1.00", "high"), ("steady", "2.00", "high"))


def attempts_by_index(jobs: list[GenerateImage], count: int) -> dict[int, list[tuple[int, str]]]:
    return {
        i: [(j.image.attempt, j.provider or "") for j in jobs if j.image.image_index == i]
        for i in range(count)
    }


async def test_a_refused_image_fails_at_once_and_is_sent_to_no_other_provider(
    database_url: str,
) -> None:
    # A threshold of 1 would cool flaky down on any failure that counted against it.
    settings = fast_settings(
        catalogue=TWO_PROVIDERS,
        retry_backoff_s=0.01,
        provider_failure_threshold=1,
        provider_cooldown_s=300,
    )

    def policy(job: GenerateImage) -> Outcome:
        if job.image.image_index == 1:
            return "refuse"
        if job.image.image_index == 2:
            return "fail_permanent"  # not a refusal: fails over as before
        return "ok"

    async with memory_rig(database_url, settings, policy) as m:
        request = pack(3)
        await m.rig.submit(request, "alice")
        done = await m.rig.wait_event("pack_completed", request.job_id)

        assert done.data.status is JobStatus.PARTIALLY_COMPLETED
        assert (done.data.completed_count, done.data.failed_count) == (1, 2)
        assert done.data.reason_code == "content_policy_violation"
        assert done.data.reason.startswith("image 1 refused for content policy")
        assert "flaky exploded" in done.data.reason
        by_index = attempts_by_index(await m.rig.jobs(), 3)
        assert by_index[0] == [(1, "flaky")]
        assert by_index[1] == [(1, "flaky")], "refused: neither retried nor failed over"
        assert by_index[2] == [(1, "flaky"), (2, "steady")]
        finals = {
            e.data.image_index: e
            for e in await m.rig.events()
            if e.type == "generation_failed" and e.data.final
        }
        assert sorted(finals) == [1, 2]
        refused = finals[1].data
        assert (refused.error_type, refused.provider, refused.attempt, refused.retryable) == (
            ErrorType.CONTENT_POLICY_VIOLATION,
            "flaky",
            1,
            False,
        )
        assert finals[2].data.error_type == "ProviderUnavailable"
        async with m.rig.pool.acquire() as conn:
            b = await balance(conn, m.rig.scheduler.ledger.today())
            rows = dict(
                await conn.fetch(
                    "SELECT image_index, status FROM generations WHERE job_id = $1",
                    request.job_id,
                )
            )
        # Only image 0 was paid for; the refused image's reservation is released.
        assert b["reserved_usd"] == 0 and b["spent_usd"] == Decimal("0.5")
        assert b["ever_reserved"] == b["settled_reservations"] + b["released"]
        assert rows == {0: "settled", 1: "released", 2: "released"}
        # The provider did its job: a refusal does not cool it down.
        assert m.rig.scheduler.health.cooling_down() == frozenset()


async def test_a_refusal_on_a_failed_over_attempt_ends_there(database_url: str) -> None:
    settings = fast_settings(catalogue=TWO_PROVIDERS, retry_backoff_s=0.01, max_attempts=2)

    def policy(job: GenerateImage) -> Outcome:
        return "fail" if job.provider == "flaky" else "refuse"

    async with memory_rig(database_url, settings, policy) as m:
        request = pack(1)
        await m.rig.submit(request, "alice")
        done = await m.rig.wait_event("pack_completed", request.job_id)

        assert (done.data.status, done.data.reason_code) == (
            JobStatus.FAILED,
            "content_policy_violation",
        )
        assert attempts_by_index(await m.rig.jobs(), 1)[0] == [
            (1, "flaky"),
            (2, "flaky"),
            (3, "steady"),
        ]
        async with m.rig.pool.acquire() as conn:
            b = await balance(conn, m.rig.scheduler.ledger.today())
        assert (b["reserved_usd"], b["spent_usd"]) == (Decimal(0), Decimal(0))


def refusal(*, retryable: bool) -> GenerationFailedData:
    return GenerationFailedData(
        image_id="img",
        image_index=0,
        attempt=1,
        error_type="ContentPolicyViolation",
        error="openai: HTTP 400 moderation_blocked: refused by its safety system",
        retryable=retryable,
        final=False,
        provider="openai",
    )


def test_refusals_never_count_against_provider_health() -> None:
    health = ProviderHealth(1, 60)
    for retryable in (False, True):  # even from a generator that marked one retryable
        data = refusal(retryable=retryable)
        assert not counts_against(data)
        assert not health.failure(data.provider, retryable=counts_against(data))
    assert not health.cooling("openai")
    outage = refusal(retryable=True).model_copy(update={"error_type": "ProviderRetryableError"})
    assert counts_against(outage)


async def test_an_image_our_safety_check_refuses_is_redrawn_once_with_a_new_seed(
    database_url: str,
) -> None:
    settings = fast_settings(catalogue=TWO_PROVIDERS, retry_backoff_s=0.01)

    def policy(job: GenerateImage) -> Outcome:
        if job.image.image_index == 0:  # refused once, then fine
            return "unsafe" if job.image.attempt == 1 else "ok"
        return "unsafe"  # image 1: refused every time

    async with memory_rig(database_url, settings, policy) as m:
        request = pack(2)
        await m.rig.submit(request, "alice")
        done = await m.rig.wait_event("pack_completed", request.job_id)

        assert done.data.status is JobStatus.PARTIALLY_COMPLETED
        assert (done.data.completed_count, done.data.failed_count) == (1, 1)
        assert done.data.reason_code == "content_policy_violation"
        jobs = await m.rig.jobs()
        by_index = attempts_by_index(jobs, 2)
        # One re-draw each, on the same offer: never a third attempt, never another provider.
        assert by_index == {0: [(1, "flaky"), (2, "flaky")], 1: [(1, "flaky"), (2, "flaky")]}
        for index in (0, 1):
            seeds = [j.seed for j in jobs if j.image.image_index == index]
            assert len(set(seeds)) == 2, "the re-draw has a new seed"
        finals = [e for e in await m.rig.events() if e.type == "generation_failed" and e.data.final]
        assert [(e.data.image_index, e.data.attempt) for e in finals] == [(1, 2)]
        assert finals[0].data.error_type == ErrorType.CONTENT_POLICY_VIOLATION
