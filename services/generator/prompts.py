"""Prompts for consistent characters: a fixed identity block, a style template and a pose.

The identity block is built only from the character snapshot and is byte-identical in
every prompt for that character, whatever the style or pose: text-conditioned models
keep a person consistent mostly by seeing the same words, in the same order, each time.
It comes right after the style's lead-in so that CLIP's 77-token window never cuts it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imagegen.errors import PermanentError
from schemas.characters import CharacterSpec
from schemas.jobs import GenerateImage
from schemas.requests import JobKind
from services.generator.backends.base import placement


class UnknownStyleError(PermanentError):
    """The requested art style has no template."""

    def __init__(self, style: str) -> None:
        self.style = style
        super().__init__(f"unknown style {style!r}; known styles: {', '.join(sorted(STYLES))}")


@dataclass(frozen=True)
class StyleTemplate:
    """Words before the subject, words after the scene, and what the style must avoid."""

    lead: str
    finish: str
    negative: str


# Failure modes every style shares; each template adds what betrays its own look.
_BASE_NEGATIVE = (
    "lowres, blurry, deformed, disfigured, bad anatomy, extra limbs, extra fingers, "
    "mutated hands, duplicate, cropped face, watermark, signature, text, jpeg artifacts"
)

STYLES: dict[str, StyleTemplate] = {
    "standard": StyleTemplate(
        "high quality illustration of",
        "detailed, well lit, sharp focus",
        "ugly, out of frame",
    ),
    "cartoon": StyleTemplate(
        "cartoon drawing of",
        "bold clean outlines, bright flat colours, expressive, family friendly",
        "photo, photorealistic, realistic skin texture, gritty",
    ),
    "watercolor": StyleTemplate(
        "soft watercolor painting of",
        "loose washes, paper texture, gentle bleeding edges, pastel palette",
        "photo, 3d render, hard outlines, digital airbrush, oversaturated",
    ),
    "realistic": StyleTemplate(
        "professional photograph of",
        "natural skin texture, 85mm lens, shallow depth of field, soft studio light",
        "cartoon, anime, illustration, painting, drawing, cgi, plastic skin",
    ),
    "painterly": StyleTemplate(
        "oil painting of",
        "visible brush strokes, rich colour, classical composition, canvas texture",
        "photo, flat colours, vector, clean digital lines",
    ),
    "anime": StyleTemplate(
        "anime illustration of",
        "cel shading, clean lineart, vibrant colours, detailed eyes, key visual",
        "photo, photorealistic, 3d, western cartoon, muddy colours",
    ),
    "storybook": StyleTemplate(
        "children's storybook illustration of",
        "warm gouache and coloured pencil, whimsical, soft light, picture book page",
        "photo, photorealistic, scary, horror, gore, dark, violent",
    ),
    "3d_render": StyleTemplate(
        "3d render of",
        "stylised character, subsurface scattering, soft global illumination, octane render",
        "2d, flat, sketch, painting, photo, grainy",
    ),
    "line_art": StyleTemplate(
        "black and white line art of",
        "clean ink lines, no shading, white background, colouring book style",
        "colour, color, shading, gradient, photo, grey tones, messy lines",
    ),
    "flat_logo": StyleTemplate(
        "flat vector mascot logo of",
        "simple geometric shapes, two to four solid colours, centred, plain background",
        "photo, gradient, texture, shading, 3d, busy background, realistic",
    ),
    "abstract": StyleTemplate(
        "abstract expressionist portrait of",
        "bold shapes, dynamic colour fields, expressive composition",
        "photo, photorealistic, literal, dull colours",
    ),
    "minimalist": StyleTemplate(
        "minimalist illustration of",
        "few elements, generous negative space, limited palette, clean composition",
        "cluttered, busy, ornate, detailed background, noisy texture",
    ),
    "vintage": StyleTemplate(
        "vintage 1950s illustration of",
        "muted retro palette, halftone print texture, aged paper",
        "modern, neon, digital look, 3d render, oversaturated",
    ),
    "grunge": StyleTemplate(
        "gritty grunge illustration of",
        "distressed textures, dark moody palette, ink splatter, rough edges",
        "clean, pastel, glossy, cute, bright cheerful colours",
    ),
}

# Spellings clients send for the same style.
_ALIASES = {"watercolour": "watercolor", "3d": "3d_render", "lineart": "line_art"}

_DEFAULT_POSE = "portrait, facing the viewer, neutral background"

# Varied enough for a 23-image pack: framing, angle, expression and activity all move,
# while nothing here describes the face, so the identity block stays the only source.
PACK_POSES: list[str] = [
    "head and shoulders portrait, facing the viewer, gentle smile",
    "three-quarter view portrait, looking slightly left, calm expression",
    "profile view facing right, thoughtful expression",
    "laughing openly, head tilted back slightly",
    "close-up, surprised expression, eyebrows raised",
    "waving hello, friendly smile, upper body",
    "arms crossed, confident look, upper body",
    "full body, standing, hands in pockets",
    "full body, walking towards the viewer",
    "sitting on a bench, relaxed, reading a book",
    "looking over the shoulder, playful smirk",
    "chin resting on hand, daydreaming",
    "full body, jumping with joy, arms raised",
    "waist up, pointing at something off to the side, curious",
    "close-up, winking, cheerful",
    "sad expression, looking down, soft light",
    "determined expression, low angle view",
    "seen from slightly above, looking up at the viewer",
    "sitting cross-legged on the floor, smiling",
    "running, dynamic pose, motion",
    "holding a cup of tea, cosy, warm light",
    "thumbs up, big grin, upper body",
    "sleepy, yawning, stretching arms",
    "shouting with excitement, hands cupped around mouth",
    "silhouette against a sunset, looking into the distance",
]


def normalise_style(style: str) -> str:
    """`"3D Render"`, `"line-art"` and `"3d_render"` all name one template."""
    key = re.sub(r"[\s\-]+", "_", style.strip().lower())
    return _ALIASES.get(key, key)


def style_template(style: str) -> StyleTemplate:
    try:
        return STYLES[normalise_style(style)]
    except KeyError:
        raise UnknownStyleError(style) from None


def identity_block(character: CharacterSpec) -> str:
    """Everything that makes this person this person, in a fixed order."""
    a = character.attributes
    who = " ".join(p for p in (a.age_range, a.ethnicity, a.gender) if p)
    parts = [character.name + (f", a {who}" if who else "")]
    if character.lora is not None and character.lora.trigger_word:
        # The words the character's LoRA answers to, next to the name they belong to.
        parts.insert(0, character.lora.trigger_word)
    hair = " ".join(p for p in (a.hair_colour, a.hair_style) if p)
    if hair:
        parts.append(f"{hair} hair")
    if a.eye_colour:
        parts.append(f"{a.eye_colour} eyes")
    if a.body_type:
        parts.append(f"{a.body_type} build")
    if a.outfit:
        parts.append(f"wearing {a.outfit}")
    parts.extend(a.distinctive_features)
    if a.personality_traits:
        parts.append(f"{', '.join(a.personality_traits)} demeanour")
    if character.description:
        parts.append(character.description)
    parts.extend(character.style_modifiers)
    return _join(parts)


def build_prompt(
    character: CharacterSpec, style: str, pose: str, extra: str = ""
) -> tuple[str, str]:
    """The (prompt, negative prompt) pair for one image of `character`."""
    template = style_template(style)
    # Leads end in "of": the subject follows with a space so the phrase reads naturally.
    subject = f"{template.lead} {identity_block(character)}"
    prompt = _join([subject, pose or _DEFAULT_POSE, extra, template.finish])
    return prompt, _join([_BASE_NEGATIVE, template.negative])


def prompt_for_job(job: GenerateImage) -> tuple[str, str]:
    """The (prompt, negative prompt) for a job: one character's image, or a scene with its
    whole cast, each described by the same identity block as in their portraits."""
    extra = _join([job.prompt, job.extra_prompt])
    if job.image.kind is JobKind.PROMPT:
        # Prompt-only: the caller's words are the subject; there is no one to describe.
        template = style_template(job.style)
        prompt = _join([f"{template.lead} {job.scene_description}", extra, template.finish])
        negative = _join([_BASE_NEGATIVE, template.negative])
    elif not job.scene_description and not job.characters:
        prompt, negative = build_prompt(job.character, job.style, job.pose, extra)
    else:
        template = style_template(job.style)
        cast = [job.character, *job.characters]
        featuring = " and ".join(f"({identity_block(c)}){_placement(job, c.id)}" for c in cast)
        prompt = _join(
            [
                f"{template.lead} {job.scene_description or 'a scene'}",
                f"featuring {featuring}",
                job.pose,
                extra,
                template.finish,
            ]
        )
        negative = _join([_BASE_NEGATIVE, template.negative])
    if job.negative_prompt:
        negative = _join([negative, job.negative_prompt])
    return prompt, negative


def _placement(job: GenerateImage, character_id: str) -> str:
    """ " on the left" and the like: where the layout puts the character (scenes with one)."""
    for region in job.layout:
        if region.character_id == character_id:
            return f" {placement((region.x0, region.y0, region.x1, region.y1))}"
    return ""


def _join(parts: list[str]) -> str:
    """Comma-join non-empty parts, with whitespace collapsed and stray commas trimmed."""
    cleaned = (re.sub(r"\s+", " ", p).strip(" ,") for p in parts)
    return ", ".join(p for p in cleaned if p)
