"""The runtime generates from a bundle in a process where torch & co cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = {"torch", "diffusers", "transformers", "onnx", "onnxscript", "safetensors"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker did not work")
    """
)

SCRIPT = BLOCKER + textwrap.dedent(
    """
    from edgediff.runtime import Pipeline

    pipe = Pipeline.load(sys.argv[1])
    images = pipe("a red circle", num_inference_steps=2, seed=0, output_type="np")
    assert images.shape == (1, 64, 64, 3), images.shape
    leaked = sorted(BLOCKED & {m.split(".")[0] for m in sys.modules})
    assert not leaked, leaked
    print("generated", float(images.mean()))
    """
)


def test_generate_with_torch_unimportable(tiny_bundle):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_bundle)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("generated")


# The shared tools the trainers, calibration and the bench score with: none may need torch.
TOOLS = BLOCKER + textwrap.dedent(
    """
    import edgediff.bundle, edgediff.metrics.quality, edgediff.metrics.timing
    import edgediff.metrics.evaluator
    from edgediff.data import shapes

    images, attributes, captions = shapes.batch(seed=0, start=0, size=4)
    assert images.shape == (4, 3, 64, 64) and len(captions) == 4, images.shape
    drawn = shapes.sample(0, 0)
    assert shapes.read_by_rules(drawn.image) == drawn.attributes
    leaked = sorted(BLOCKED & {m.split(".")[0] for m in sys.modules})
    assert not leaked, leaked
    print("ok")
    """
)


def test_bundle_metrics_and_shapes_data_import_without_torch():
    proc = subprocess.run(
        [sys.executable, "-c", TOOLS], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
