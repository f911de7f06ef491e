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
