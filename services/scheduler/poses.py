"""Pose and expression variations for packs: identity stays, framing and mood change."""

from __future__ import annotations

PACK_POSES: tuple[str, ...] = (
    "front view, neutral expression, head and shoulders",
    "three-quarter view facing left, gentle smile",
    "three-quarter view facing right, gentle smile",
    "side profile facing left, calm expression",
    "front view, laughing, eyes bright",
    "looking over the shoulder, curious expression",
    "front view, surprised expression, eyebrows raised",
    "slight head tilt, thoughtful expression",
    "front view, determined expression, chin up",
    "three-quarter view, soft smile, looking down",
    "front view, winking, playful expression",
    "side profile facing right, serene expression",
    "waist-up, arms crossed, confident smile",
    "waist-up, waving hello, cheerful",
    "close-up portrait, pensive, looking away",
    "front view, sleepy expression, yawning",
    "three-quarter view, speaking, animated expression",
    "front view, sad expression, downcast eyes",
    "looking up, hopeful expression",
    "front view, frowning, annoyed expression",
    "full body, standing, relaxed posture",
    "full body, walking, mid-stride",
    "seated, hands folded, friendly smile",
)


def pose_for(index: int) -> str:
    return PACK_POSES[index % len(PACK_POSES)]


REFERENCE_POSES: tuple[str, ...] = (
    "front view, neutral expression, head and shoulders, plain background, even light",
    "side profile facing left, neutral expression, head and shoulders, plain background",
    "front view, smiling, head and shoulders, plain background",
    "front view, surprised expression, head and shoulders, plain background",
    "front view, sad expression, head and shoulders, plain background",
)
"""A character's reference set: front, side and three expressions, on a plain background so
the identity (not the scene) is what later images are conditioned on."""

PORTRAIT_POSE = "front view, head and shoulders, soft smile, looking at the viewer"

SCENE_FRAMINGS: tuple[str, ...] = (
    "wide establishing shot",
    "medium shot",
    "close-up on the characters",
    "over-the-shoulder view",
)
"""Framing for the images of one story page, so several images per page differ."""


def reference_pose(index: int) -> str:
    return REFERENCE_POSES[index]


def scene_framing(index: int) -> str:
    return SCENE_FRAMINGS[index % len(SCENE_FRAMINGS)]


PHOTO_PROMPTS: tuple[str, ...] = (
    "natural light portrait in a bright cafe, relaxed smile",  # 0
    "walking along a city street, candid, golden hour",  # 1
    "sitting in a park on a sunny day, casual outfit",  # 2
    "business headshot, plain light-grey studio backdrop, soft key light",  # 3
    "corporate portrait in a modern glass office, confident posture",  # 4
    "on a beach boardwalk at sunset, windswept hair",  # 5
    "speaking at a conference podium, professional attire",  # 6
    "black and white editorial portrait, dramatic side light",  # 7
    "reading a book by a window in a cosy apartment",  # 8
    "neon-lit night street, cinematic colour grading",  # 9
    "double-exposure style portrait with city skyline",  # 10
    "LinkedIn profile photo, navy background, friendly smile",  # 11
    "at a farmers market holding fresh flowers",  # 12
    "surrounded by coloured smoke, fashion editorial",  # 13
    "rim-lit silhouette against a bright window, artistic",  # 14
    "hiking on a mountain trail, outdoor gear",  # 15
    "portrait through a prism, rainbow light flares",  # 16
    "painterly fine-art portrait, chiaroscuro lighting",  # 17
    "seated at a boardroom table, arms folded, approachable",  # 18
    "half-body portrait, clean white backdrop, magazine cover lighting",  # 19
    "on a rooftop terrace at dusk, city lights behind",  # 20
    "environmental portrait in a designer studio, soft daylight",  # 21
    "laughing with a coffee cup on a sunny balcony",  # 22
)
"""The photo pack's 23 prompts (PinGlass): settings and light around the same face."""

PHOTO_GROUPS: dict[str, tuple[int, ...]] = {
    "professional": (3, 4, 11, 6, 18, 21, 0, 19, 7),
    "lifestyle": (0, 1, 2, 5, 8, 12, 15, 20, 22),
    "creative": (7, 9, 10, 13, 14, 16, 17, 19, 21),
    "all": tuple(range(len(PHOTO_PROMPTS))),
}
"""Each group's prompt indices, in the order its images use them (PinGlass's presets)."""


def photo_prompt(group: str, index: int) -> str:
    """Image `index` of a photo pack of `group`: the group's prompts in turn."""
    order = PHOTO_GROUPS[group]
    return PHOTO_PROMPTS[order[index % len(order)]]
