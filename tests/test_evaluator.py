"""The evaluator (torch training, ONNX export) and the torch-free bench metrics built on it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgediff.data import shapes
from edgediff.data.shapes import Attributes
from edgediff.errors import EdgediffError, InputError
from edgediff.metrics.evaluator import EVALUATOR_ONNX, OUTPUT_NAMES, Evaluator, Readings
from edgediff.metrics.quality import attribute_accuracy, kid

# Neither the training seed (0) nor FRESH_SEED, which the training script reports on.
TEST_SEED = 777


def _kid_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (a·b/d + 1)^3, written out pair by pair."""
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (float(a @ b) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_pairwise_reference():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.3, 1.2, size=(12, 5))
    # One subset of every row: a permutation of each set, which MMD² does not see.
    mean, std = kid(x, y, subsets=1, subset_size=12)
    assert mean == pytest.approx(_kid_reference(x, y), rel=1e-10, abs=1e-12)
    assert std == 0.0


def test_kid_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    same, same_std = kid(a, b, subsets=20, subset_size=300)
    shifted, _ = kid(a, b + 0.5, subsets=20, subset_size=300)
    assert abs(same) < 0.02
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 0.2
    assert shifted > 20 * abs(same)


def test_kid_is_seeded_and_checks_its_inputs():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(40, 4))
    assert kid(a, b, subsets=5, subset_size=30, seed=3) == kid(
        a, b, subsets=5, subset_size=30, seed=3
    )
    with pytest.raises(ValueError, match="one d"):
        kid(a, rng.normal(size=(40, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        kid(a[:1], b)


def _readings(rows: list[tuple[str, str, str, str]]) -> Readings:
    labels = {a: [row[i] for row in rows] for i, a in enumerate(shapes.ATTRIBUTES)}
    return Readings(labels=labels, features=np.zeros((len(rows), 4)))


def test_attribute_accuracy_on_hand_made_readings():
    targets = [
        Attributes("red", "circle", "big", "left"),
        Attributes("blue", "star", "small", "top"),
        Attributes("white", "cross", "big", "center"),
        Attributes("cyan", "square", "small", "right"),
    ]
    readings = _readings(
        [
            ("red", "circle", "big", "left"),  # all right
            ("blue", "cross", "small", "top"),  # shape wrong
            ("white", "cross", "small", "bottom"),  # size and position wrong
            ("green", "square", "small", "right"),  # colour wrong
        ]
    )
    assert attribute_accuracy(readings, targets) == {
        "colour": 0.75,
        "shape": 0.75,
        "size": 0.75,
        "position": 0.75,
        "all": 0.25,
    }
    assert readings.attributes()[0] == targets[0]
    with pytest.raises(ValueError, match="readings"):
        attribute_accuracy(readings, targets[:3])


def test_bench_imports_no_torch():
    code = (
        "import sys, edgediff.metrics.evaluator, edgediff.metrics.quality; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_missing_evaluator_says_how_to_make_it(tmp_path):
    with pytest.raises(EdgediffError, match=r"does not exist.*edgediff\.models\.evaluator"):
        Evaluator.load(tmp_path / "nope.onnx")


@pytest.fixture(scope="module")
def tiny_evaluator(tmp_path_factory):
    """A 30-step evaluator and its ONNX export (seconds, not a usable reader)."""
    torch = pytest.importorskip("torch", reason="training the evaluator needs the [train] extra")
    from edgediff.models.evaluator import export_evaluator, train_evaluator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_evaluator(steps=30, batch_size=32, seed=0, progress=False)
        path = export_evaluator(model, tmp_path_factory.mktemp("evaluator") / "evaluator.onnx")
    finally:
        torch.set_num_threads(threads)
    return model, path


def test_tiny_evaluator_trains_and_exports(tiny_evaluator):
    import torch

    model, path = tiny_evaluator
    history = model.loss_history
    assert len(history) == 30
    assert np.mean(history[-5:]) < 0.85 * np.mean(history[:5])  # 5.4 -> 3.8 on torch 2.13
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert weight_bytes < 1_000_000

    images, _, _ = shapes.batch(TEST_SEED, 0, 9, held_out="include")
    evaluator = Evaluator.load(path, threads=1)
    outputs = evaluator.session.run(None, {"images": images})
    with torch.no_grad():
        expected = [t.numpy() for t in model(torch.from_numpy(images))]
    assert [o.name for o in evaluator.session.get_outputs()] == list(OUTPUT_NAMES)
    widths = [len(shapes.CHOICES[a]) for a in shapes.ATTRIBUTES] + [128]
    for got, want, width in zip(outputs, expected, widths, strict=True):
        assert got.shape == want.shape == (9, width)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_training_is_deterministic():
    torch = pytest.importorskip("torch", reason="training the evaluator needs the [train] extra")
    from edgediff.models.evaluator import train_evaluator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = train_evaluator(steps=5, batch_size=16, seed=0, progress=False)
        other = train_evaluator(steps=5, batch_size=16, seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert again.loss_history == other.loss_history
    for a, b in zip(again.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_evaluator_reads_uint8_and_float_alike(tiny_evaluator):
    _, path = tiny_evaluator
    evaluator = Evaluator.load(path, threads=1)
    uint8 = np.stack([shapes.sample(TEST_SEED, i, "include").image for i in range(5)])
    floats, _, _ = shapes.batch(TEST_SEED, 0, 5, held_out="include")
    a = evaluator.read(uint8, batch_size=2)  # batches of 2, 2 and 1
    b = evaluator.read(floats)
    assert a.labels == b.labels
    assert a.features.shape == (5, 128) and a.features.dtype == np.float64
    np.testing.assert_allclose(a.features, b.features, atol=1e-5)
    for attribute, names in a.labels.items():
        assert set(names) <= set(shapes.CHOICES[attribute])
    with pytest.raises(InputError, match="uint8"):
        evaluator.read(floats.transpose(0, 2, 3, 1))


@pytest.mark.skipif(
    not EVALUATOR_ONNX.is_file(),
    reason=f"{EVALUATOR_ONNX} is not built (python -m edgediff.models.evaluator)",
)
def test_shipped_evaluator_reads_fresh_images():
    evaluator = Evaluator.load(EVALUATOR_ONNX, threads=1)
    samples = [shapes.sample(TEST_SEED, i, "include") for i in range(500)]
    readings = evaluator.read(np.stack([s.image for s in samples]))
    accuracy = attribute_accuracy(readings, [s.attributes for s in samples])
    assert all(accuracy[a] >= 0.99 for a in shapes.ATTRIBUTES), accuracy
    assert readings.features.shape == (500, 128)
