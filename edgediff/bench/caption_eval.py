"""Does a bundle draw what its prompt says? Generate from shapes captions, read the images back
with the evaluator, and score each attribute; KID on the evaluator's features against real
images drawn independently from the same distribution. numpy + onnxruntime only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from edgediff.data import shapes
from edgediff.data.shapes import EVAL_SEED, eval_prompts
from edgediff.runtime.images import to_uint8

_NOISE_SEED_OFFSET = 7_919
_REFERENCE_SEED_OFFSET = 104_729


@dataclass(frozen=True)
class CaptionScores:
    """Per-attribute accuracy, the share with every attribute right, and KID (mean, std)."""

    prompts: int
    accuracy: dict[str, float]
    kid: tuple[float, float]


def generate_for(
    pipeline, attrs: list[shapes.Attributes], steps: int, guidance: float, seed: int,
    batch_size: int = 32, progress: Callable[[int], None] | None = None,
) -> np.ndarray:  # fmt: skip
    """uint8 [N, 64, 64, 3] images for the canonical caption of each attribute set."""
    out = []
    for start in range(0, len(attrs), batch_size):
        chunk = attrs[start : start + batch_size]
        images = pipeline(
            [shapes.canonical_caption(a) for a in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance,
            seed=seed * _NOISE_SEED_OFFSET + start,
            output_type="np",
        )
        out.append(to_uint8(images))
        if progress is not None:
            progress(len(chunk))
    return np.concatenate(out)


def real_images_for(attrs: list[shapes.Attributes], seed: int) -> np.ndarray:
    """Real drawings of these attribute sets (fresh jitter), uint8 [N, 64, 64, 3]."""
    return np.stack(
        [shapes.render(a, np.random.default_rng([seed, 99, i])) for i, a in enumerate(attrs)]
    )


def score(evaluator, generated: np.ndarray, real: np.ndarray, attrs: list) -> CaptionScores:
    """Read generated images, score them against their captions, and KID against `real` ones
    (drawn independently of `attrs`, from the same distribution)."""
    from edgediff.metrics.quality import attribute_accuracy, kid

    fake = evaluator.read(generated)
    ref = evaluator.read(real)
    size = min(len(attrs), 100)
    return CaptionScores(
        prompts=len(attrs),
        accuracy=attribute_accuracy(fake, attrs),
        kid=kid(fake.features, ref.features, subset_size=size),
    )


def scores_as_dict(scores: dict[str, CaptionScores]) -> dict:
    """JSON-ready form of named score sets."""
    return {name: asdict(s) for name, s in scores.items()}


def format_scores(scores: dict[str, CaptionScores]) -> str:
    """A plain-text table: one row per prompt set, accuracy per attribute, all-right share, KID."""
    columns = [*shapes.ATTRIBUTES, "all"]
    width = max(len(name) for name in scores) + 2
    lines = [f"{'':<{width}}{'prompts':>8}" + "".join(f"{c:>10}" for c in columns) + f"{'KID':>16}"]
    for name, s in scores.items():
        kid_mean, kid_std = s.kid
        lines.append(
            f"{name:<{width}}{s.prompts:>8}"
            + "".join(f"{s.accuracy[c]:>10.1%}" for c in columns)
            + f"{kid_mean:>9.4f} ±{kid_std:.4f}"
        )
    return "\n".join(lines)


def evaluate(
    pipeline, evaluator, prompts: int, held_out: int, steps: int, guidance: float,
    seed: int = EVAL_SEED, progress: bool = True,
) -> dict[str, CaptionScores]:  # fmt: skip
    """Scores for `prompts` training-combination captions and `held_out` held-out-pair ones."""
    from tqdm.auto import tqdm

    from edgediff.errors import InputError

    size = pipeline.config.default_image_size
    if size != shapes.IMAGE_SIZE:
        raise InputError(
            f"this bundle makes {size}×{size} images; the evaluator reads {shapes.IMAGE_SIZE}×"
            f"{shapes.IMAGE_SIZE} captioned shapes",
            "Evaluate a shapes model (the shipped one, or one made by `edgediff train`)",
        )
    sets = {"seen pairs": (prompts, False)}
    if held_out:
        sets["held-out pairs"] = (held_out, True)
    results = {}
    with tqdm(total=prompts + held_out, desc="generating", unit="img", disable=not progress) as bar:
        for name, (n, only_held_out) in sets.items():
            attrs = eval_prompts(n, seed, only_held_out)
            generated = generate_for(pipeline, attrs, steps, guidance, seed, progress=bar.update)
            # KID's estimator assumes independent samples: real images of the *same* captions
            # would pair up across the two sets and push it below zero.
            reference = eval_prompts(n, seed + _REFERENCE_SEED_OFFSET, only_held_out)
            results[name] = score(evaluator, generated, real_images_for(reference, seed), attrs)
    return results
