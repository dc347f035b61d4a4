"""Synthetic radiographs in the exact MURA v1.1 layout, with planted findings and their boxes."""

from muratune.data.synth.draw import render_image
from muratune.data.synth.plan import (
    BOXES_CSV,
    DIFFICULTIES,
    FINDING_KINDS,
    MURA_STUDY_COUNTS,
    ROOT_NAME,
    ImageSpec,
    StudySpec,
    SynthSummary,
    parse_difficulty,
    plan_dataset,
)
from muratune.data.synth.write import draw_image, encode_png, generate_dataset

__all__ = [
    "BOXES_CSV",
    "DIFFICULTIES",
    "FINDING_KINDS",
    "MURA_STUDY_COUNTS",
    "ROOT_NAME",
    "ImageSpec",
    "StudySpec",
    "SynthSummary",
    "draw_image",
    "encode_png",
    "generate_dataset",
    "parse_difficulty",
    "plan_dataset",
    "render_image",
]
