"""LoRA at export: a bundle exported with --lora makes the images diffusers makes with the same
LoRAs loaded and fused; a LoRA that does not fit its checkpoint is refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgediff.tolerances import PIPELINE_IMAGE_ATOL

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft", reason="fusing LoRAs needs peft (the [train] extra)")

from edgediff.cli import cli  # noqa: E402
from edgediff.runtime import Pipeline  # noqa: E402

UNET_LAYERS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_LAYERS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def make_lora(checkpoint, path, seed: int, text_encoder: bool = True):
    """A random LoRA (PEFT, diffusers' file layout) for the checkpoint's attention layers."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(checkpoint)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=UNET_LAYERS,
                                     init_lora_weights="gaussian"))  # fmt: skip
    layers = {"unet_lora_layers": get_peft_model_state_dict(pipe.unet)}
    if text_encoder:
        pipe.text_encoder.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TEXT_LAYERS,
                                                 init_lora_weights="gaussian"))  # fmt: skip
        layers["text_encoder_lora_layers"] = get_peft_model_state_dict(pipe.text_encoder)
    # gaussian init leaves lora_B at 0 (no effect): give B weights so the LoRA changes images.
    for state in layers.values():
        for key, value in state.items():
            if "lora_B" in key:
                value.copy_(torch.randn_like(value) * 0.3)
    diffusers.StableDiffusionPipeline.save_lora_weights(
        path.parent, weight_name=path.name, safe_serialization=True, **layers
    )
    return path


@pytest.fixture(scope="module")
def loras(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {
        "a": make_lora(checkpoints["tiny"], root / "a.safetensors", seed=1),
        "b": make_lora(checkpoints["tiny"], root / "b.safetensors", seed=2, text_encoder=False),
        "other-base": make_lora(checkpoints["tiny-v"], root / "v.safetensors", seed=3),
    }


def reference_images(checkpoint, files_and_scales, latents) -> np.ndarray:
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(checkpoint)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    names = []
    for i, (path, _) in enumerate(files_and_scales):
        pipe.load_lora_weights(str(path), adapter_name=f"l{i}")
        names.append(f"l{i}")
    if names:
        pipe.set_adapters(names, adapter_weights=[scale for _, scale in files_and_scales])
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
    with torch.no_grad():
        return pipe(
            ["a red circle on the left", "a blue square"], latents=torch.from_numpy(latents),
            num_inference_steps=4, guidance_scale=5.0, output_type="np",
        ).images  # fmt: skip


LATENTS = np.random.default_rng(0).standard_normal((2, 4, 16, 16), dtype=np.float32)


def exported_images(checkpoint, bundle, loras_and_scales) -> np.ndarray:
    """Export with --lora FILE:SCALE each, then generate from the bundle."""
    args = [arg for path, scale in loras_and_scales for arg in ("--lora", f"{path}:{scale}")]
    # --no-verify: the images are compared with diffusers' instead, a stricter check.
    command = ["export", str(checkpoint), str(bundle), *args, "--no-verify"]
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 0, result.output
    with Pipeline.load(bundle) as pipe:
        return pipe(
            ["a red circle on the left", "a blue square"], latents=LATENTS,
            num_inference_steps=4, guidance_scale=5.0, output_type="np",
        )  # fmt: skip


def as_kohya(peft_file, out, alphas: dict[str, float]):
    """The same LoRA in kohya/A1111 names (lora_unet_..., lora_te_..., .alpha)."""
    from safetensors.torch import load_file, save_file

    state = {}
    for key, value in load_file(peft_file).items():
        prefix, _, rest = key.partition(".")
        module, _, kind = rest.rpartition(".lora_")
        name = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[prefix] + module.replace(".", "_")
        state[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        state[f"{name}.alpha"] = torch.tensor(alphas[prefix])
    save_file(state, out)
    return out


def test_a_bundle_with_two_loras_equals_diffusers(checkpoints, loras, tmp_path):
    # LoRA a in kohya's names (make_lora's lora_alpha as kohya's alpha), b in PEFT's: one
    # export covers both formats and the weighted sum of two.
    kohya = as_kohya(loras["a"], tmp_path / "a.safetensors", {"unet": 2.0, "text_encoder": 4.0})
    actual = exported_images(
        checkpoints["tiny"], tmp_path / "bundle", [(kohya, 0.8), (loras["b"], 1.5)]
    )
    expected = reference_images(
        checkpoints["tiny"], [(loras["a"], 0.8), (loras["b"], 1.5)], LATENTS
    )
    assert np.abs(actual - expected).max() <= PIPELINE_IMAGE_ATOL
    # The LoRAs changed the images (the test would pass vacuously otherwise).
    assert np.abs(actual - reference_images(checkpoints["tiny"], [], LATENTS)).max() > 0.01
    manifest = json.loads((tmp_path / "bundle/manifest.json").read_text())
    assert [(r["file"], r["scale"]) for r in manifest["loras"]] == [
        ("a.safetensors", 0.8),
        ("b.safetensors", 1.5),
    ]
    assert manifest["source"]["checkpoint"] == checkpoints["tiny"].name
    info = CliRunner().invoke(cli, ["info", str(tmp_path / "bundle"), "--no-verify"])
    assert "LoRA fused" in info.output and "a.safetensors at 0.8" in info.output


def test_one_lora_fuses_as_diffusers_fuses_it(checkpoints, loras, tmp_path):
    # The export path is the two-LoRA test's; this checks the fusing of a single file cheaply.
    from edgediff.export.lora import LoraSpec, fuse_into_copy

    fused = fuse_into_copy(checkpoints["tiny"], [LoraSpec(loras["a"], 0.6)], tmp_path / "fused")
    actual = reference_images(fused, [], LATENTS)
    expected = reference_images(checkpoints["tiny"], [(loras["a"], 0.6)], LATENTS)
    assert np.abs(actual - expected).max() <= 1e-5


def test_a_lora_for_another_base_is_refused_by_name(checkpoints, loras, tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "export",
            str(checkpoints["tiny"]),
            str(tmp_path / "b"),
            "--lora",
            str(loras["other-base"]),
        ],
    )
    assert result.exit_code == 1
    assert "does not fit" in result.output and "match no layer" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("missing.safetensors", "does not exist"),
        ("{a}:much", "is not a scale"),
        ("{a}:50", "[-10, 10]"),
    ],
)
def test_bad_lora_arguments(checkpoints, loras, tmp_path, text, message):
    text = text.format(a=loras["a"])
    result = CliRunner().invoke(
        cli, ["export", str(checkpoints["tiny"]), str(tmp_path / "b"), "--lora", text]
    )
    assert result.exit_code == 1 and message in result.output
