"""The captioned-shapes generator: deterministic, and its captions describe what is drawn."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from edgediff.data import shapes


def test_samples_are_deterministic_and_index_addressable():
    images, attrs, captions = shapes.batch(seed=3, start=10, size=4)
    for i in range(4):
        s = shapes.sample(3, 10 + i)
        as_uint8 = np.rint((images[i].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
        assert np.array_equal(as_uint8, s.image)
        assert (attrs[i], captions[i]) == (s.attributes, s.caption)
    again = shapes.batch(seed=3, start=10, size=4)
    assert np.array_equal(images, again[0]) and captions == again[2]
    assert not np.array_equal(images, shapes.batch(seed=4, start=10, size=4)[0])


def test_grammar_has_the_promised_range():
    assert len(shapes.COLOURS) >= 8 and len(shapes.SHAPES) >= 5
    assert len(shapes.SIZES) >= 2 and len(shapes.POSITIONS) >= 5
    a = shapes.Attributes("red", "circle", "big", "left")
    phrasings = {shapes.caption(a, k) for k in range(shapes.NUM_PHRASINGS)}
    assert len(phrasings) >= 10
    assert "a big red circle on the left" in phrasings
    assert "red circle, left side, big" in phrasings


def test_captions_name_every_attribute():
    for i in range(300):
        s = shapes.sample(0, i)
        words = s.caption.replace(",", " ").split()
        a = s.attributes
        assert a.colour in words and a.shape in words, s.caption
        assert any(w in words for w in shapes._SIZE_WORDS[a.size]), s.caption
        assert any(p in s.caption for p in shapes._POSITION_PHRASES[a.position]), s.caption


def test_captions_match_the_geometry_of_the_pixels():
    # The geometric reader measures colour, centroid, extent and fill; no learned model.
    wrong = collections.Counter()
    n = 600
    for i in range(n):
        s = shapes.sample(5, i, held_out="include")
        read = shapes.read_by_rules(s.image)
        assert read is not None
        for name, want, got in zip(
            shapes.ATTRIBUTES, s.attributes.as_tuple(), read.as_tuple(), strict=True
        ):
            wrong[name] += want != got
    for name in shapes.ATTRIBUTES:
        assert wrong[name] / n <= 0.01, (name, wrong)


def test_held_out_pairs_never_appear_in_training_stream():
    seen = {shapes.sample(1, i).attributes for i in range(2000)}
    assert not any(a.held_out for a in seen)
    assert len({(a.colour, a.shape) for a in seen}) == 8 * 5 - len(shapes.HELD_OUT)
    only = [shapes.sample(1, i, held_out="only").attributes for i in range(50)]
    assert all(a.held_out for a in only)


def test_read_by_rules_finds_nothing_on_a_blank_image():
    assert shapes.read_by_rules(np.full((64, 64, 3), 30, np.uint8)) is None


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_every_shape_renders_inside_the_frame(shape):
    for position in shapes.POSITIONS:
        a = shapes.Attributes("white", shape, "big", position)
        img = shapes.render(a, np.random.default_rng(0)).astype(int)
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert border.max() < 120, (shape, position)  # no shape pixels touch the border
