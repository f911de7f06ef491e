"""Which models the scheduler may pick from, so a request none can serve is a 422 up front.

The gateway reads the same `IMAGEGEN_CATALOGUE` value the scheduler prices from (the local
stack and the Kubernetes overlays pass it to both) and keeps only what it needs to refuse
early: each offer's model and quality. Whenever `IMAGEGEN_OPENAI_API_KEY` is set, dall-e-3
and gpt-image-1 are on offer too (the scheduler adds them the same way). With no catalogue
setting the gateway knows no offers and leaves the check to the scheduler (the job fails
with reason `no_offer`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from schemas.requests import Quality
from services.gateway.problems import Loc, field_error
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

_RANK = {Quality.DRAFT: 0, Quality.STANDARD: 1, Quality.HIGH: 2}
OPENAI_MODELS = ("dall-e-3", "gpt-image-1")


@dataclass(frozen=True)
class Offers:
    """Model -> the best quality an offer of it meets; None: unknown (no check)."""

    best: dict[str, Quality] | None

    def require(self, quality: Quality, model: str | None, loc: Loc) -> None:
        """Refuse (422 naming `loc`'s model, or quality) what no offer meets."""
        if self.best is None:
            return
        on_offer = (
            ", ".join(f"{name} ({q.value})" for name, q in sorted(self.best.items())) or "none"
        )
        if model is not None:
            offered = self.best.get(model)
            if offered is None:
                raise field_error(
                    (*loc, "model"),
                    f"no configured provider offers model {model!r}; models on offer: {on_offer}",
                )
            if _RANK[offered] < _RANK[quality]:
                raise field_error(
                    (*loc, "quality"),
                    f"model {model!r} is offered at quality {offered.value!r} at most, not"
                    f" {quality.value!r}; models on offer: {on_offer}",
                )
            return
        if not any(_RANK[q] >= _RANK[quality] for q in self.best.values()):
            raise field_error(
                (*loc, "quality"),
                f"no configured provider offers quality {quality.value!r}; models on offer:"
                f" {on_offer}",
            )


def from_settings(settings: GatewaySettings) -> Offers:
    best: dict[str, Quality] = {}
    known = False
    text = (settings.catalogue or "").strip()
    if text:
        try:
            raw = json.loads(text)
            items = raw.get("offers") if isinstance(raw, dict) else raw
            for item in items or []:
                model, quality = str(item["model"]), Quality(item["quality"])
                if model not in best or _RANK[quality] > _RANK[best[model]]:
                    best[model] = quality
            known = True
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # The scheduler refuses a bad catalogue at start-up; here it only disables the check.
            log.warning("event=catalogue_unreadable error=%s", exc)
    key = settings.openai_api_key
    if key is not None and key.get_secret_value().strip():
        for model in OPENAI_MODELS:
            best.setdefault(model, Quality.HIGH)
        known = True
    return Offers(best if known else None)
