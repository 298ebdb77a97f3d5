"""Recover a diffusers checkpoint from an edgediff bundle's fp32 ONNX models.

The shipped shapes model was trained before `edgediff distill` existed and its PyTorch weights
were not kept; distilling it needs them back. torch.onnx keeps most parameters under their own
names; the rest it folds into the graph: a Linear's weight becomes a transposed MatMul constant,
a GroupNorm's affine a Mul and an Add after InstanceNormalization. Each of those is found among
the initializers of its module's nodes (node names carry the module path), reshaped, and the
recovered models are checked against the ONNX models on random inputs before anything is
written.

    python scripts/bundle_to_checkpoint.py [BUNDLE] OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

# Where an op keeps a module's parameter: (op, leaf) -> (input position, how to undo the
# export's folding). Positions None: any constant input of the right size (Mul/Add after
# InstanceNormalization hold a GroupNorm's affine as C x 1 x 1).
_HOLDERS = {
    ("Conv", "weight"): (1, None),
    ("Conv", "bias"): (2, None),
    ("ConvTranspose", "weight"): (1, None),
    ("ConvTranspose", "bias"): (2, None),
    ("LayerNormalization", "weight"): (1, None),
    ("LayerNormalization", "bias"): (2, None),
    ("Gemm", "weight"): (1, None),
    ("Gemm", "bias"): (2, None),
    ("Gather", "weight"): (0, None),
    ("MatMul", "weight"): (1, "transpose"),  # a Linear's x @ W.T, W.T stored
    ("Mul", "weight"): (None, None),
    ("Add", "bias"): (None, None),
}


def _candidates(nodes: list, leaf: str, size: int, inits: dict) -> list[np.ndarray]:
    """Constant inputs of `nodes` that can hold the parameter `leaf` of `size` elements."""
    found = []
    for node in nodes:
        holder = _HOLDERS.get((node.op_type, leaf))
        if holder is None:
            continue
        position, undo = holder
        for i, name in enumerate(node.input):
            array = inits.get(name)
            if array is None or array.size != size or position not in (None, i):
                continue
            found.append(array.T if undo == "transpose" else array)
    return found


def recovered_state(onnx_path: Path, module: torch.nn.Module, strict: bool = True) -> dict:
    """The module's state dict read from the ONNX model at `onnx_path` (`strict`: every value;
    else those the model holds)."""
    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    nodes_of: dict[str, list] = {}
    for node in graph.node:
        nodes_of.setdefault(node.name.rsplit("/", 1)[0], []).append(node)
    state, missing = {}, []
    for key, value in module.state_dict().items():
        path, leaf = key.rsplit(".", 1)
        # By name first; the exporter also shares one initializer between equal parameters
        # (untrained norms are all ones), so the module's own nodes are the authority.
        found = _candidates(nodes_of.get(path, []), leaf, value.numel(), inits)
        if not found and key in inits:
            found = [inits[key]]
        if not found and leaf == "weight":
            # A table indexed by a constant (CLIP's position embedding) is folded into an Add
            # of its rows on the parent module.
            parent = nodes_of.get(path.rsplit(".", 1)[0], [])
            adds = [n for n in parent if n.op_type == "Add"]
            found = [a for a in _candidates(adds, "bias", value.numel(), inits)]
        if len({a.tobytes() for a in found}) != 1:
            missing.append(f"{key} ({len(found)} candidates)")
            continue
        state[key] = torch.from_numpy(np.array(found[0])).reshape(value.shape)
    if missing and strict:
        raise SystemExit(f"{onnx_path}: cannot recover {', '.join(missing[:10])}")
    return state


def _check(kind: str, module: torch.nn.Module, onnx_path: Path, feeds: list[dict]) -> float:
    """Largest |torch - ONNX Runtime| of a component over the given inputs."""
    import onnxruntime as ort

    from edgediff.export.components import wrap

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    wrapper = wrap(kind, module)
    worst = 0.0
    for inputs in feeds:
        theirs = session.run(None, inputs)
        with torch.no_grad():
            ours = wrapper(*(torch.from_numpy(v) for v in inputs.values()))
        ours = ours if isinstance(ours, tuple) else (ours,)
        for a, b in zip(ours, theirs, strict=True):
            worst = max(worst, float(np.abs(a.numpy() - b).max()))
    return worst


def recover(bundle: Path, out: Path, tolerance: float = 1e-4) -> Path:
    """Rebuild BUNDLE's fp32 models as a diffusers pipeline in OUT, checked against ONNX."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from edgediff.bundle.reader import Bundle
    from edgediff.export.components import sample_inputs
    from edgediff.models.presets import save_pipeline
    from edgediff.runtime.tokenizer import PromptTokenizer

    opened = Bundle.open(bundle)
    onnx_of = {c: opened.path(opened.model(c, "fp32").file) for c in opened.manifest.components}
    config = json.loads((bundle / "unet" / "config.json").read_text())
    unet = UNet2DConditionModel.from_config(config)
    unet.load_state_dict(recovered_state(onnx_of["unet"], unet))
    text_config = json.loads((bundle / "text_encoder" / "config.json").read_text())
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    text_encoder.load_state_dict(recovered_state(onnx_of["text_encoder"], text_encoder))
    vae = AutoencoderKL.from_config(
        json.loads((bundle / "vae_decoder" / "config.json").read_text())
    )
    decoder_state = recovered_state(onnx_of["vae_decoder"], vae, strict=False)
    encoder_state = recovered_state(onnx_of["vae_encoder"], vae, strict=False)
    halves = {
        k: (encoder_state if k.startswith(("encoder.", "quant_conv.")) else decoder_state)[k]
        for k in vae.state_dict()
    }
    vae.load_state_dict(halves)
    for module in (unet, text_encoder, vae):
        module.eval()

    geo = opened.manifest.model
    latent = (geo.default_latent, geo.default_latent)
    tok = opened.manifest.tokenizer
    ids = PromptTokenizer(opened.path(tok.file), tok.max_length, tok.pad_token_id)(
        ["a big red circle on the left", ""]
    )
    checks = {
        "unet": (unet, [sample_inputs("unet", geo, 2, latent, seed=s, timestep=t)
                        for s, t in ((0, 981.0), (1, 21.0))]),
        "text_encoder": (text_encoder, [sample_inputs("text_encoder", geo, 2, latent, 0, ids)]),
        "vae_decoder": (vae, [sample_inputs("vae_decoder", geo, 2, latent, seed=3)]),
        "vae_encoder": (vae, [sample_inputs("vae_encoder", geo, 2, latent, seed=4)]),
    }  # fmt: skip
    for kind, (module, feeds) in checks.items():
        error = _check(kind, module, onnx_of[kind], feeds)
        print(f"{kind}: max |torch - onnx| = {error:.2e}")
        if error > tolerance:
            raise SystemExit(f"{kind} was not recovered: error {error:.2e} > {tolerance:g}")

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(bundle / "tokenizer")),
        unet=unet,
        scheduler=DDIMScheduler.from_config(opened.manifest.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return save_pipeline(pipe, out)


def main() -> None:
    """Command line: recover a bundle (default: the shipped one) into OUT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, nargs="?", default=None)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    from edgediff.runtime.pipeline import default_bundle

    if args.out.exists():
        sys.exit(f"{args.out} exists: choose another OUT (nothing was written)")
    print(f"wrote {recover(args.bundle or default_bundle(), args.out)}")


if __name__ == "__main__":
    main()
