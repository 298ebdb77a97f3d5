"""A hand-edited manifest either works or is refused with an EdgediffError, never a traceback.

Hypothesis replaces one field of the shipped bundle's manifest at a time — anywhere in the
tree — with a value of another JSON type, an out-of-range number or a hostile path, then opens
the bundle, prints `edgediff info` and generates one image.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgediff.bundle.reader import Bundle
from edgediff.errors import BundleError, EdgediffError
from edgediff.runtime.bundle_info import format_bundle
from edgediff.runtime.pipeline import DEFAULT_BUNDLE, Pipeline

ORIGINAL = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
# An engine record too (engines are derived caches: its file need not exist to open the bundle).
ORIGINAL["engines"] = [
    {
        "component": "unet",
        "precision": "int8",
        "file": "engines/rtx/unet.int8.plan",
        "onnx": "unet/model.int8.onnx",
        "onnx_sha256": "0" * 64,
        "flavour": "rtx",
        "tensorrt_version": "rtx-1.7.1.116",
        "targets": ["8.6", "8.9"],
        "gpu_name": None,
        "profile": {
            "sample": {"min": [1, 4, 16, 16], "opt": [2, 4, 16, 16], "max": [8, 4, 16, 16]}
        },
        "flags": {"strongly_typed": True},
        "key": "0" * 64,
        "build_seconds": 1.5,
    }
]


def _paths(node, prefix=()) -> list[tuple]:
    """Every key path in the manifest, leaves and inner nodes alike."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node[:3]):
            out += _paths(value, (*prefix, index))
    return out


PATHS = _paths(ORIGINAL)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.sampled_from([0, -1, 1, 2**31, float("nan"), float("inf"), 1e308, -0.0, 0.5]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "../outside.onnx", "/etc/passwd", "C:\\\\x", "a" * 300, "fp16", "unet"]),
    st.text(max_size=6),
    st.lists(st.integers(-2, 2), max_size=3),
    st.dictionaries(st.sampled_from(["a", "file", "fp32"]), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, root)
    return root


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(path=st.sampled_from(PATHS), value=VALUES, delete=st.booleans())
def test_a_mutated_manifest_works_or_is_refused_cleanly(root, path, value, delete):
    data = copy.deepcopy(ORIGINAL)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    (root / "manifest.json").write_text(json.dumps(data))
    try:
        bundle = Bundle.open(root)
        assert format_bundle(bundle)
        with Pipeline.load(bundle) as pipe:
            images = pipe("a red circle", num_inference_steps=1, seed=0, output_type="np")
    except EdgediffError as e:
        assert "\n" not in str(e)
        return
    assert np.isfinite(images).all()


@pytest.mark.parametrize("value", [[], [1.0], [1.0, 8.0, 9.0]])
def test_a_fixed_length_field_of_another_length_is_refused(root, value):
    # Found by the fuzz test above: an empty guidance_range passed the schema and broke
    # `edgediff info` with a ValueError.
    data = copy.deepcopy(ORIGINAL)
    data["components"]["unet"]["models"]["fp32"]["distillation"]["guidance_range"] = value
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"guidance_range' must be a list of 2"):
        Bundle.open(root)
