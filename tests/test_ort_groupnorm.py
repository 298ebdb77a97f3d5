"""GroupNorm statistics as graph inputs and outputs (backends.ort_groupnorm), on the shipped
bundle's VAE in ONNX Runtime: the original numbers untouched, given statistics honoured, and
the reported statistics pooling across pixel weights as one image's."""

from __future__ import annotations

import numpy as np
import pytest

from edgediff.errors import BackendError
from edgediff.runtime.backends.onnx_proto import load_model, make_tensor
from edgediff.runtime.backends.onnxruntime import OrtBackend
from edgediff.runtime.backends.ort_groupnorm import (
    NORM_GIVEN,
    NORM_WEIGHT,
    add_norm_statistics,
    mean_input,
    norm_count,
    stats_output,
    var_input,
)
from edgediff.runtime.pipeline import DEFAULT_BUNDLE

# (component, input, first output, input shape): a 128×160 image's latents and the image.
VAES = [
    ("vae_decoder", "latent_sample", "sample", (2, 4, 32, 40)),
    ("vae_encoder", "sample", "latent_parameters", (2, 3, 128, 160)),
]


@pytest.fixture(scope="module")
def backend() -> OrtBackend:
    return OrtBackend("ort-cpu", threads=2)


def _rewritten(backend: OrtBackend, path):
    """The VAE at `path` whole, its GroupNorms taking and reporting statistics."""
    return backend.load_vae_for_tiles(path, split=False).tiled


def _input(shape: tuple[int, ...]) -> np.ndarray:
    x = np.random.default_rng(sum(shape)).standard_normal(shape, dtype=np.float32)
    return np.clip(x, -1.0, 1.0) if shape[1] == 3 else x  # images live in [-1, 1]


def _given(stats: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    feeds = {NORM_GIVEN: np.ones(1, np.float32)}
    for i in range(count):
        feeds[mean_input(i)] = stats[stats_output(i)][..., 0]
        feeds[var_input(i)] = stats[stats_output(i)][..., 1]
    return feeds


@pytest.mark.parametrize(("component", "source", "target", "shape"), VAES)
def test_fed_only_its_input_the_rewritten_graph_is_the_original(
    backend, component, source, target, shape
):
    path = DEFAULT_BUNDLE / component / "model.onnx"
    original, rewritten = backend.load(path), _rewritten(backend, path)
    x = _input(shape)
    outputs = rewritten.run({source: x})
    # The statistics' defaults select each InstanceNormalization as stored: same op, same bits.
    assert rewritten.output_names[0] == target and rewritten.input_names == (source,)
    np.testing.assert_array_equal(outputs[target], original.run({source: x})[target])
    count = norm_count(outputs)
    assert count == {"vae_decoder": 17, "vae_encoder": 11}[component]
    assert all(outputs[stats_output(i)].shape == (shape[0], 8, 2) for i in range(count))


@pytest.mark.parametrize(("component", "source", "target", "shape"), VAES)
def test_given_its_own_statistics_an_untiled_run_is_the_original(
    backend, component, source, target, shape
):
    rewritten = backend.load_vae_for_tiles(
        DEFAULT_BUNDLE / component / "model.onnx", split=False
    ).tiled
    x = _input(shape)
    own = rewritten.run({source: x})
    given = rewritten.run({source: x, **_given(own, norm_count(own))})
    # x·a + c from the reported statistics against InstanceNormalization's own arithmetic.
    error = float(np.abs(given[target] - own[target]).max())
    print(f"\n{component}: given its own statistics, max abs difference {error:.1e}")
    assert error < 1e-4
    for i in range(norm_count(own)):  # with the same normalisation the inputs are the same
        np.testing.assert_allclose(given[stats_output(i)], own[stats_output(i)], rtol=1e-4)


def test_statistics_are_weighted_and_pool_across_a_split_of_the_pixels(backend):
    decoder = backend.load_vae_for_tiles(
        DEFAULT_BUNDLE / "vae_decoder/model.onnx", split=False
    ).tiled
    z = _input((1, 4, 24, 32))
    count = norm_count(decoder.output_names)

    def stats(weight: np.ndarray) -> np.ndarray:
        result = decoder.run({"latent_sample": z, NORM_WEIGHT: weight[None, None]})
        return np.stack([result[stats_output(i)] for i in range(count)]).astype(np.float64)

    whole = stats(np.ones((24, 32), np.float32))
    tripled = stats(np.full((24, 32), 3.0, np.float32))
    np.testing.assert_allclose(tripled, whole, rtol=1e-5, atol=1e-7)
    # Left and right parts (weighted 1 and 0.25 on a ramp, as blend weights are) pool to the
    # whole: means and variances by their masses, the spread of the means included.
    ramp = np.linspace(0.25, 1.0, 32, dtype=np.float32)[None, :].repeat(24, 0)
    left, right = ramp.copy(), 1.0 - ramp
    parts = [(stats(w), float(w.sum())) for w in (left, right)]
    mass = sum(m for _, m in parts)
    mean = sum(s[..., 0] * m for s, m in parts) / mass
    var = sum((s[..., 1] + (s[..., 0] - mean) ** 2) * m for s, m in parts) / mass
    np.testing.assert_allclose(mean, whole[..., 0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, whole[..., 1], rtol=1e-4)


def test_graphs_it_cannot_rewrite_are_refused_with_a_fix(backend, tmp_path):
    # The tiny decoder has no GroupNorm: nothing to share, plain tiles are exact for it.
    for path in (DEFAULT_BUNDLE / "vae_decoder.tiny/model.onnx", tmp_path / "missing.onnx"):
        with pytest.raises(BackendError) as caught:
            _rewritten(backend, path)
        assert caught.value.fix and "\n" not in str(caught.value)
    data = (DEFAULT_BUNDLE / "vae_decoder/model.onnx").read_bytes()
    model = load_model(data)
    model.graph.initializer.append(make_tensor("norm_mean_0", np.zeros(1, np.float32)))
    with pytest.raises(ValueError, match="named like"):
        add_norm_statistics(model)
    untouched = load_model(data)
    assert list(model.graph.node) == list(untouched.graph.node)  # refused before any change
    assert list(model.graph.input) == list(untouched.graph.input)
    # A rewritten graph's InstanceNormalizations sit inside If branches: nothing left to do.
    model = load_model(data)
    assert add_norm_statistics(model) == 17 and add_norm_statistics(model) == 0
