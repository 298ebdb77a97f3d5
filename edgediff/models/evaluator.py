"""The evaluator: a small CNN that reads colour, shape, size and position off a 64×64 image.

Trained on every colour+shape pair (held-out ones included: it must read those too) with noise,
blur and contrast augmentation so it still reads images a diffusion model drew, then shipped as
ONNX (`edgediff/assets/evaluator.onnx`) so `edgediff.bench` measures without torch.

    python -m edgediff.models.evaluator --steps 1500 --threads 1 [--out PATH]

writes edgediff/assets/evaluator.onnx by default (1500 steps: 100 % on every attribute of
2,000 fresh images, ~7 minutes on one CPU core).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from edgediff.bundle.files import atomic_path
from edgediff.data import shapes
from edgediff.errors import ExportError
from edgediff.metrics.evaluator import EVALUATOR_ONNX, INPUT_NAME, OUTPUT_NAMES, Evaluator
from edgediff.metrics.quality import attribute_accuracy
from edgediff.models.training.loop import cosine_lr
from edgediff.quiet import captured_output
from edgediff.tolerances import EVALUATOR_ATOL

FEATURE_DIM = 128
WIDTHS = (24, 48, 96, 32)  # channels after each stride-2 block: 64 -> 32 -> 16 -> 8 -> 4 px
HEAD_SIZES = {a: len(shapes.CHOICES[a]) for a in shapes.ATTRIBUTES}
FRESH_SEED = 10_000  # accuracy is measured on this seed's stream: train with any other

# Augmentation: what a diffusion model's output looks like next to a rendered image.
_NOISE_SHARE = 0.5
_NOISE_SIGMA = 0.1  # in [-1, 1] units
_BLUR_SHARE = 0.3
_CONTRAST_SHARE = 0.5
_CONTRAST = 0.15  # factor in 1 ± this, about each image's mean
_BRIGHTNESS = 0.05


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),  # not SiLU: a third less time per training step on CPU
    )


class EvaluatorNet(nn.Module):
    """Four stride-2 conv blocks (64→4 px), flatten, a 128-d feature layer and four heads."""

    def __init__(self, features: int = FEATURE_DIM):
        super().__init__()
        inputs = (3, *WIDTHS[:-1])
        self.body = nn.Sequential(*(_block(a, b) for a, b in zip(inputs, WIDTHS, strict=True)))
        # Flatten rather than pool: where the shape sits is one of the things to read.
        self.neck = nn.Sequential(
            nn.Flatten(),
            nn.Linear(WIDTHS[-1] * 4 * 4, features),
            nn.BatchNorm1d(features),
            nn.ReLU(inplace=True),
        )
        self.heads = nn.ModuleList(nn.Linear(features, n) for n in HEAD_SIZES.values())
        self.loss_history: list[float] = []  # filled by train_evaluator, one entry per step

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """images [N, 3, 64, 64] in [-1, 1] -> (colour, shape, size, position logits, features)."""
        features = self.neck(self.body(images))
        return (*(head(features) for head in self.heads), features)


def _augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random contrast/brightness, blur and gaussian noise on shares of the batch (no flips)."""
    n = images.shape[0]

    def pick(share: float) -> torch.Tensor:
        return (torch.rand(n, 1, 1, 1, generator=gen) < share).float()

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, 1, 1, 1, generator=gen)

    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    scaled = (images - mean) * uniform(1 - _CONTRAST, 1 + _CONTRAST) + mean
    scaled = scaled + uniform(-_BRIGHTNESS, _BRIGHTNESS)
    use = pick(_CONTRAST_SHARE)
    images = use * scaled + (1 - use) * images

    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    weight = pick(_BLUR_SHARE) * uniform(0.3, 1.0)  # blend: anything from a hint to a full blur
    images = weight * blurred + (1 - weight) * images

    sigma = pick(_NOISE_SHARE) * uniform(0.0, _NOISE_SIGMA)
    images = images + sigma * torch.randn(images.shape, generator=gen)
    return images.clamp(-1.0, 1.0)  # decoded diffusion images are clipped the same way


def _labels(attrs: list[shapes.Attributes]) -> torch.Tensor:
    """[N, 4] class indices in ATTRIBUTES order."""
    return torch.tensor([a.label_indices() for a in attrs], dtype=torch.long)


def train_evaluator(
    steps: int, batch_size: int = 128, seed: int = 0, progress: bool = True
) -> EvaluatorNet:
    """Train on all colour+shape pairs; deterministic for a seed; loss per step in .loss_history."""
    from tqdm import tqdm

    if steps < 1 or batch_size < 2:
        raise ValueError(f"need steps >= 1 and batch_size >= 2, got {steps}, {batch_size}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = EvaluatorNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    warmup = max(1, min(100, steps // 20))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_lr(step, steps, warmup, floor=0.0)
    )
    model.train()
    bar = tqdm(range(steps), desc="evaluator", disable=not progress, dynamic_ncols=True)
    for step in bar:
        images, attrs, _ = shapes.batch(seed, step * batch_size, batch_size, held_out="include")
        x = _augment(torch.from_numpy(images), gen)
        labels = _labels(attrs)
        outputs = model(x)
        loss = sum(F.cross_entropy(logits, labels[:, i]) for i, logits in enumerate(outputs[:4]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        model.loss_history.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{model.loss_history[-1]:.4f}")
    return model.eval()


def accuracy_on_fresh_images(
    evaluator: Evaluator, n: int = 2000, seed: int = FRESH_SEED
) -> dict[str, float]:
    """Share read right per attribute (and 'all' four) on `n` images of the stream for `seed`."""
    images, attrs, _ = shapes.batch(seed, 0, n, held_out="include")
    return attribute_accuracy(evaluator.read(images), attrs)


def _dynamic_shapes() -> dict[str, dict[int, object]]:
    return {INPUT_NAME: {0: torch.export.Dim("batch", min=1)}}


def _export_to(model: EvaluatorNet, tmp: Path, opset: int) -> None:
    """torch.onnx with the dynamo exporter, the TorchScript one if dynamo cannot trace it."""
    example = (torch.zeros(2, 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE),)
    common = {"input_names": [INPUT_NAME], "output_names": list(OUTPUT_NAMES)}
    with captured_output(), torch.no_grad():
        try:
            program = torch.onnx.export(
                model,
                example,
                None,
                dynamic_shapes=_dynamic_shapes(),
                opset_version=opset,
                dynamo=True,
                **common,
            )
            program.save(str(tmp))
            return
        except Exception as error:  # the legacy exporter below is the fallback for any failure
            dynamo_error = error
        try:
            torch.onnx.export(
                model,
                example,
                str(tmp),
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
                opset_version=opset,
                dynamo=False,
                **common,
            )
        except Exception as error:
            raise ExportError(
                f"could not export the evaluator to ONNX (dynamo: {dynamo_error}; legacy: {error})",
                "Check the torch and onnx versions against the [train] extra",
            ) from error


def verify_export(
    model: EvaluatorNet, path: Path, n: int = 64, seed: int = FRESH_SEED + 1
) -> float:
    """Max |difference| of ONNX Runtime vs PyTorch outputs on `n` fresh images; raise if too big."""
    session = Evaluator.load(path).session  # checks the input and output names
    images, _, _ = shapes.batch(seed, 0, n, held_out="include")
    # Odd batch sizes too: the batch axis must really be dynamic.
    worst = 0.0
    for chunk in (images, images[:1], images[:7]):
        got = session.run(None, {INPUT_NAME: chunk})
        with torch.no_grad():
            want = [t.numpy() for t in model(torch.from_numpy(chunk))]
        for name, a, b in zip(OUTPUT_NAMES, got, want, strict=True):
            if a.shape != b.shape:
                raise ExportError(f"{path}: output {name} has shape {a.shape}, expected {b.shape}")
            worst = max(worst, float(np.abs(a - b).max()))
    if not worst <= EVALUATOR_ATOL:
        raise ExportError(
            f"{path} differs from the PyTorch evaluator by {worst:.3g} (allowed {EVALUATOR_ATOL})",
            "Re-export; if it persists, export with dynamo=False",
        )
    return worst


def export_evaluator(model: EvaluatorNet, path: str | Path, opset: int = 18) -> Path:
    """Write `model` as ONNX (input 'images', outputs per attribute + 'features'), verified."""
    path = Path(path)
    model.eval()
    with atomic_path(path) as tmp:
        _export_to(model, tmp, opset)
        verify_export(model, tmp)  # before the rename: a bad file never lands under `path`
    return path


def main(argv: list[str] | None = None) -> None:
    """Train, export, verify, and print per-attribute accuracy on fresh images."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=EVALUATOR_ONNX)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--eval-images", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.seed == FRESH_SEED:
        parser.error(f"seed {FRESH_SEED} is the stream accuracy is measured on: pick another")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    model = train_evaluator(args.steps, args.batch_size, args.seed)
    trained = time.perf_counter() - started
    path = export_evaluator(model, args.out)
    print(
        f"trained {args.steps} steps × {args.batch_size} in {trained:.0f} s; wrote {path} "
        f"({path.stat().st_size / 1e6:.2f} MB), ONNX Runtime matches PyTorch"
    )

    accuracy = accuracy_on_fresh_images(Evaluator.load(path), args.eval_images, FRESH_SEED)
    print(f"accuracy of {path} on {args.eval_images} fresh images (seed {FRESH_SEED}):")
    for name, value in accuracy.items():
        print(f"  {name:<9} {100 * value:6.2f} %")


if __name__ == "__main__":
    main()
