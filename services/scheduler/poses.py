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
