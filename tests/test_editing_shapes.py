"""Editing works on the shipped shapes model, as its evaluator reads the results: recolour a
drawn circle with image-to-image, move it with inpainting."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image, ImageFilter

from edgediff.data.shapes import Attributes, render
from edgediff.metrics.evaluator import Evaluator
from edgediff.runtime import Pipeline

SEEDS = 128
RED_LEFT = Attributes("red", "circle", "big", "left")


@pytest.fixture(scope="module")
def drawn():
    """(pipeline, evaluator, 128 drawings of a big red circle on the left)."""
    drawings = [render(RED_LEFT, np.random.default_rng([7, s])) for s in range(SEEDS)]
    with Pipeline.load() as pipe:
        yield pipe, Evaluator.load(), drawings


def share_reading(evaluator: Evaluator, images: list, target: Attributes) -> float:
    readings = evaluator.read(np.stack([np.asarray(i) for i in images])).attributes()
    return float(np.mean([r == target for r in readings]))


def test_img2img_recolours_a_drawn_circle(drawn, caplog):
    pipe, evaluator, drawings = drawn
    with caplog.at_level(logging.ERROR):
        images = [
            pipe(
                "a big blue circle on the left", image=d, strength=0.6, guidance_scale=8.0, seed=s
            )[0]
            for s, d in enumerate(drawings)
        ]
    # Measured: 93.8 % (README); at the students' recommended guidance 5, 78 %.
    assert share_reading(evaluator, images, Attributes("blue", "circle", "big", "left")) >= 0.9


def test_inpainting_moves_a_drawn_circle(drawn):
    pipe, evaluator, drawings = drawn
    images = []
    for s, drawing in enumerate(drawings):
        # Repaint where the circle is (its pixels, widened by 4) and the whole right half.
        shape = np.abs(drawing.astype(int) - drawing[0, 0].astype(int)).sum(axis=-1) > 60
        mask = np.asarray(
            Image.fromarray((shape * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(9))
        ).copy()
        mask[:, 32:] = 255
        images.append(
            pipe("a big red circle on the right", image=drawing, mask_image=mask, seed=s)[0]
        )
    # Measured: 100 %.
    assert share_reading(evaluator, images, Attributes("red", "circle", "big", "right")) >= 0.9


def test_int8_unets_edit_too(drawn):
    _, evaluator, drawings = drawn
    with Pipeline.load(precision="int8") as pipe:
        assert pipe.model_files["unet"][0].endswith("int8.onnx")
        images = [
            pipe("a big blue circle on the left", image=d, strength=0.6, guidance_scale=8.0,
                 seed=s)[0]
            for s, d in enumerate(drawings[:32])
        ]  # fmt: skip
    assert share_reading(evaluator, images, Attributes("blue", "circle", "big", "left")) >= 0.8
