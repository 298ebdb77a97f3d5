"""Read colour, shape, size and position off images with the shipped ONNX evaluator (no torch).

The network is trained and exported by `python -m edgediff.models.evaluator`; this module only
runs it, with numpy and ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgediff.data.shapes import ATTRIBUTES, CHOICES, IMAGE_SIZE, Attributes
from edgediff.errors import EdgediffError, InputError

if TYPE_CHECKING:
    import onnxruntime

EVALUATOR_ONNX = Path(__file__).resolve().parent.parent / "assets" / "evaluator.onnx"
INPUT_NAME = "images"
OUTPUT_NAMES = (*ATTRIBUTES, "features")
BATCH_SIZE = 256
_MAKE_IT = (
    "Train and export it with `python -m edgediff.models.evaluator --out {path}` "
    "(needs the [train] extra; about 7 minutes on one CPU core)"
)


@dataclass(frozen=True)
class Readings:
    """What the evaluator read off N images: class names per attribute and its feature vectors."""

    labels: dict[str, list[str]]  # attribute -> N class names
    features: np.ndarray  # float64 [N, feature_dim]

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def attributes(self) -> list[Attributes]:
        """The readings as one Attributes per image."""
        return [
            Attributes(*values)
            for values in zip(*(self.labels[a] for a in ATTRIBUTES), strict=True)
        ]


def as_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 64, 64, 3] or float [N, 3, 64, 64] in [-1, 1] -> float32 [N, 3, 64, 64]."""
    images = np.asarray(images)
    size = IMAGE_SIZE
    if images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (size, size, 3):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 127.5 - 1.0
    if images.dtype.kind == "f" and images.ndim == 4 and images.shape[1:] == (3, size, size):
        return np.ascontiguousarray(images, dtype=np.float32)
    raise InputError(
        f"the evaluator cannot read an array of {images.dtype} {tuple(images.shape)}",
        f"Pass uint8 [N, {size}, {size}, 3] (0..255) or float [N, 3, {size}, {size}] (-1..1)",
    )


class Evaluator:
    """The ONNX evaluator in an ONNX Runtime CPU session."""

    def __init__(self, session: onnxruntime.InferenceSession, path: Path):
        self.session = session
        self.path = path
        self.feature_dim = int(session.get_outputs()[-1].shape[-1])

    @classmethod
    def load(cls, path: str | Path = EVALUATOR_ONNX, threads: int = 0) -> Evaluator:
        """Open the evaluator at `path`; threads=0 lets ONNX Runtime choose."""
        path = Path(path)
        if not path.is_file():
            raise EdgediffError(
                f"the evaluator model {path} does not exist", _MAKE_IT.format(path=path)
            )
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise EdgediffError(
                "the evaluator needs ONNX Runtime, which is not installed",
                "Install edgediff with the [cpu] or [gpu] extra",
            ) from error
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own exception types for unreadable files
            raise EdgediffError(
                f"ONNX Runtime cannot load the evaluator {path}: {error}",
                _MAKE_IT.format(path=path),
            ) from error
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
            raise EdgediffError(
                f"{path} is not an evaluator: inputs {inputs}, outputs {outputs} "
                f"(expected [{INPUT_NAME!r}], {list(OUTPUT_NAMES)})",
                _MAKE_IT.format(path=path),
            )
        return cls(session, path)

    def read(self, images: np.ndarray, batch_size: int = BATCH_SIZE) -> Readings:
        """Read every image: uint8 [N, 64, 64, 3] or float [N, 3, 64, 64] in [-1, 1]."""
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        x = as_model_input(images)
        n = x.shape[0]
        indices = np.zeros((n, len(ATTRIBUTES)), dtype=np.int64)
        features = np.zeros((n, self.feature_dim), dtype=np.float64)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            *logits, feats = self.session.run(None, {INPUT_NAME: x[start:stop]})
            for i, scores in enumerate(logits):
                indices[start:stop, i] = scores.argmax(axis=1)
            features[start:stop] = feats
        labels = {
            a: [CHOICES[a][k] for k in indices[:, i].tolist()] for i, a in enumerate(ATTRIBUTES)
        }
        return Readings(labels=labels, features=features)
