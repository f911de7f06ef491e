"""Where each character of a multi-character scene stands: one region per character.

The generator masks each character's references to its region (IP-Adapter masks), so
the regions must not overlap and should each hold a person: the planner picks the grid
(columns x rows) whose cells come closest to a person's upper-body proportions, so a
16:9 page puts up to four characters side by side and a square page of four makes a
2 x 2 grid. A last row with fewer characters spreads them over the full width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from imagegen.errors import PermanentError
from schemas.characters import CharacterSpec
from schemas.jobs import MAX_SCENE_CHARACTERS, CharacterRegion

# Width / height of the cell a character should fill: a person from the waist up.
_PERSON_ASPECT = 0.6


def grid_for(count: int, width: int, height: int) -> tuple[int, int]:
    """(columns, rows) for `count` characters in a `width` x `height` image."""
    best: tuple[float, int, int] | None = None
    for rows in range(1, count + 1):
        columns = math.ceil(count / rows)
        if (rows - 1) * columns >= count:
            continue  # an empty row: never better than fewer rows
        cell_aspect = (width / columns) / (height / rows)
        distance = abs(math.log(cell_aspect / _PERSON_ASPECT))
        if best is None or distance < best[0]:
            best = (distance, columns, rows)
    assert best is not None
    return best[1], best[2]


def plan_layout(
    characters: Sequence[CharacterSpec],
    width: int,
    height: int,
    reference_keys: Sequence[Sequence[str]],
) -> list[CharacterRegion]:
    """One region per character (in cast order, left to right then top to bottom), each
    with that character's own reference keys; no regions for a one-character image."""
    count = len(characters)
    if count > MAX_SCENE_CHARACTERS:
        raise PermanentError(
            f"characters: at most {MAX_SCENE_CHARACTERS} characters in one image, got {count}"
        )
    if count <= 1:
        return []
    columns, rows = grid_for(count, width, height)
    regions = []
    for index, (character, keys) in enumerate(zip(characters, reference_keys, strict=True)):
        row, column = divmod(index, columns)
        in_row = min(columns, count - row * columns)
        regions.append(
            CharacterRegion(
                character_id=character.id,
                x0=round(column / in_row, 6),
                y0=round(row / rows, 6),
                x1=round((column + 1) / in_row, 6),
                y1=round((row + 1) / rows, 6),
                reference_keys=list(keys),
            )
        )
    return regions
