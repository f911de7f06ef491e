"""Who a job's images are for: its characters' audiences, made stricter by the request.

A character's audience is the default of every job it appears in; a request may ask for a
stricter one ("children" for a general character) but never a looser one, which is a 422
naming the field rather than a silent downgrade of a children's character.
"""

from __future__ import annotations

from collections.abc import Iterable

from schemas.characters import Audience, CharacterSpec, strictest
from services.gateway.problems import Loc, field_error


def job_audience(requested: Audience | None, cast: Iterable[CharacterSpec], loc: Loc) -> Audience:
    """The audience the job's images are held to; 422 at `loc` when `requested` is looser
    than a character's."""
    cast = list(cast)
    floor = strictest(*(character.audience for character in cast))
    if requested is not None and strictest(requested, floor) != requested:
        strict = next(c for c in cast if c.audience == floor)
        raise field_error(
            loc,
            f"character {strict.id} is for {floor!r}: a job may make its audience stricter,"
            f" never looser (omit the field, or send {floor!r})",
        )
    return strictest(requested, floor)
