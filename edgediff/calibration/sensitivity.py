"""Which layers does quantisation hurt? Measured, not guessed: each layer is quantised alone
and the pipeline samples real trajectories with it; the PSNR of its final output against the
fp32 pipeline at the same prompts and seeds is that layer's score.

A layer is a block of the source model (`down_blocks.1.attentions.0`, `mid_block.resnets.0`,
`conv_in`): the node names the exporter gives carry the module path they came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edgediff.bundle.schema import QUANTIZED_OPS, Calibration, kind_of
from edgediff.errors import InputError
from edgediff.metrics.quality import paired_psnr
from edgediff.runtime.pipeline import Models, Pipeline


def quantizable_nodes(model: Path) -> list[str]:
    """Names of the nodes that get Q/DQ inputs (Conv, MatMul, Gemm but not attention's
    products, see attention_products), in graph order."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    products = set(_attention_products(graph))
    return [n.name for n in graph.node if n.op_type in QUANTIZED_OPS and n.name not in products]


def attention_products(model: Path) -> list[str]:
    """The MatMuls of two activations (attention's Q·Kᵀ and P·V), which stay float.

    Measured on the shipped U-Net, ORT CPU, batch 2: with them quantised a call took 462 ms
    at 64×64 latents and 1581 ms at 96×96 (relative error 0.28 and 0.37 against fp32); kept
    float, the runtime fuses them into one attention op (runtime.backends.ort_attention):
    254 and 601 ms (0.11 and 0.16), with --target cpu 208 against 434 ms at 64×64. On
    TensorRT they stay in its own fused attention kernels (not measured: no GPU here).
    """
    import onnx

    return _attention_products(onnx.load(str(model), load_external_data=False).graph)


def _attention_products(graph) -> list[str]:
    constants = {t.name for t in graph.initializer}
    constants |= {out for n in graph.node if n.op_type == "Constant" for out in n.output}
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul" and not any(name in constants for name in n.input)
    ]


# Module lists whose items are the blocks sensitivity is measured for (diffusers/transformers).
_BLOCK_LISTS = ("resnets", "attentions", "downsamplers", "upsamplers", "layers")


def layer_of(node: str) -> str:
    """The block a node belongs to: its module path cut after the first block-list index.

    `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q/MatMul`
    -> `down_blocks.1.attentions.0`; `mid_block.resnets.0.conv1/Conv` -> `mid_block.resnets.0`;
    `encoder.layers.2.mlp.fc1/MatMul` -> `encoder.layers.2`; `conv_in/Conv` -> `conv_in`.
    """
    module = node.split("/")[0]
    parts = module.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in _BLOCK_LISTS and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2])
    return module


def layer_groups(nodes: list[str]) -> dict[str, list[str]]:
    """Layer name -> its quantisable nodes, layers in graph order."""
    groups: dict[str, list[str]] = {}
    for node in nodes:
        groups.setdefault(layer_of(node), []).append(node)
    return groups


def resolve_keep(names: list[str], groups: dict[str, list[str]]) -> list[str]:
    """Nodes named by a keep list of layer names, node names or module prefixes."""
    nodes = [n for g in groups.values() for n in g]
    kept: list[str] = []
    for name in names:
        matched = [
            n
            for n in nodes
            if n == name or n.split("/")[0] == name or n.startswith(name.rstrip(".") + ".")
        ]
        if not matched:
            raise InputError(
                f"--keep names '{name}', which is no quantisable layer of this model",
                f"Name layers such as {', '.join(list(groups)[:4])} (see the sensitivity table)",
            )
        kept.extend(n for n in matched if n not in kept)
    return kept


@dataclass(frozen=True)
class Probe:
    """Fixed prompts and seeds, and the fp32 pipeline's final output for them."""

    prompts: list[str]
    seed: int
    steps: int
    guidance: float
    height: int | None
    width: int | None
    output_type: str  # "latent" (final latents), or "np" (images) for the VAE decoder
    reference: np.ndarray | None


def make_probe(
    pipeline: Pipeline, component: str, prompts: list[str], seed: int, calibration: Calibration
) -> Probe:
    """Sample the fp32 reference a component's quantised variants are measured against, with
    the steps, guidance and image size the calibration used."""
    output_type = "np" if kind_of(component) == "vae_decoder" else "latent"
    probe = Probe(
        prompts,
        seed,
        calibration.steps,
        calibration.guidance,
        calibration.height,
        calibration.width,
        output_type,
        None,
    )
    return replace(probe, reference=sample(pipeline, probe))


def sample(pipeline: Pipeline, probe: Probe, models: Models | None = None) -> np.ndarray:
    """The pipeline's output for the probe's prompts, seed and settings."""
    return pipeline(
        probe.prompts,
        num_inference_steps=probe.steps,
        guidance_scale=probe.guidance,
        seed=probe.seed,
        height=probe.height,
        width=probe.width,
        output_type=probe.output_type,
        models=models,
    )


def measure(pipeline: Pipeline, component: str, model: Path, probe: Probe) -> float:
    """Paired PSNR (dB) of the pipeline's output with `model` as `component`, against fp32."""
    session = pipeline.backend.load(model)
    try:
        base = pipeline.models_for(probe.steps)
        trial = replace(base, **{kind_of(component): lambda **feeds: session.run(feeds)})
        out = sample(pipeline, probe, trial)
    finally:
        session.close()
    # Images live in [0, 1]; latents have no natural peak, so each sample's range is used.
    return paired_psnr(out, probe.reference, 1.0 if probe.output_type == "np" else None)


@dataclass(frozen=True)
class LayerScore:
    """The PSNR of the pipeline's output when this layer alone is quantised."""

    layer: str
    nodes: int
    psnr_db: float


def layer_sensitivity(
    groups: dict[str, list[str]],
    score_only: Callable[[list[str]], float],
    progress: bool = False,
) -> list[LayerScore]:
    """Score each layer quantised alone; most sensitive (lowest PSNR) first."""
    from tqdm.auto import tqdm

    scores = [
        LayerScore(layer, len(nodes), score_only(nodes))
        for layer, nodes in tqdm(
            groups.items(), desc="sensitivity", unit="layer", disable=not progress
        )
    ]
    return sorted(scores, key=lambda s: s.psnr_db)


@dataclass(frozen=True)
class KeepSearch:
    """Layers kept in float, the PSNR reached, and every trial on the way."""

    keep: list[str]
    psnr_db: float
    met_target: bool
    trials: list[dict]


def choose_keep(
    ranked: list[LayerScore],
    score_keeping: Callable[[list[str]], float],
    target_db: float,
    progress: bool = False,
) -> KeepSearch:
    """Keep the fewest most-sensitive layers in float until the whole model meets the target.

    Layers are added in order of measured sensitivity; the first count that reaches
    `target_db` wins. Keeping every layer is fp32, so the search always ends.
    """
    from tqdm.auto import tqdm

    trials = []
    bar = tqdm(total=len(ranked) + 1, desc="keep search", unit="trial", disable=not progress)
    with bar:
        for k in range(len(ranked) + 1):
            keep = [s.layer for s in ranked[:k]]
            db = score_keeping(keep)
            trials.append({"keep": keep, "psnr_db": db})
            bar.update()
            if db >= target_db:
                return KeepSearch(keep, db, True, trials)
    return KeepSearch(keep, db, False, trials)


def as_json(scores: list[LayerScore]) -> list[dict]:
    """JSON-ready layer scores."""
    return [asdict(s) for s in scores]


def format_table(scores: list[LayerScore], kept: list[str]) -> str:
    """Plain-text sensitivity table, most sensitive first, kept layers marked."""
    width = max([len(s.layer) for s in scores] + [5])
    lines = [f"{'layer':<{width}}  {'nodes':>5}  {'PSNR alone':>10}  kept"]
    for s in scores:
        mark = "yes" if s.layer in kept else ""
        lines.append(f"{s.layer:<{width}}  {s.nodes:>5}  {s.psnr_db:>7.1f} dB  {mark}")
    return "\n".join(lines)
