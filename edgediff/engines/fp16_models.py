"""fp16 ONNX models made from a bundle's fp32 ones, for TensorRT flavours typed by the graph.

TensorRT 11 and TensorRT-RTX take every tensor's type from the ONNX: there is no FP16 builder
flag, so an fp16 engine needs an fp16 model. `edgediff build` makes the missing ones with the
export's own conversion (fp32 islands where fp16 breaks), checks each against its fp32 model on
ONNX Runtime's CPU provider — on the bundle's recorded calibration inputs where it has them, on
seeded random inputs otherwise — and lists it in the manifest like every other model, so no
user has to re-export.
"""

from __future__ import annotations

import json

import numpy as np

from edgediff.bundle.edit import BundleEdit
from edgediff.bundle.reader import Bundle
from edgediff.bundle.schema import ModelEntry, TensorSpec
from edgediff.errors import EngineError
from edgediff.runtime.tokenizer import PromptTokenizer

CHECK_SEED = 0
# Each new fp16 model is compared on one call per prompt: a prompt and the unconditional one.
# One image per call keeps the check's peak memory at a single ORT session's (6.4 GB for an
# SD 1.5 U-Net at 512², where the batch of two that guidance runs took 9.4 GB).
_CHECK_PROMPTS = ("a big red circle on the left", "")
CHECK_CALLS = len(_CHECK_PROMPTS)


def fp16_file(component: str) -> str:
    """Where a component's fp16 model made by `edgediff build` lives in the bundle."""
    return f"{component}/model.fp16.onnx"


def make_fp16_models(tx: BundleEdit, components: list[str]) -> None:
    """Convert, check and stage an fp16 model for each of `components` in the edit `tx`.

    A model that fails its check raises, and the edit then drops everything it staged.
    """
    try:
        from edgediff.graphs.compare import cpu_session, errors, verification
        from edgediff.graphs.files import io_specs
        from edgediff.graphs.fp16 import convert_to_fp16
    except ImportError as e:
        raise EngineError(
            f"making fp16 models for a strongly typed TensorRT needs onnx ({e.name} is missing)",
            "pip install 'edgediff[quant]' (or export the bundle with --fp16)",
        ) from None
    bundle = tx.bundle
    for component in components:
        source = bundle.model(component, "fp32")
        bundle.verify(list(source.files))
        cases = check_inputs(bundle, component)
        reference = cpu_session(bundle.path(source.file))
        expected = [reference.run(None, case) for case in cases]
        del reference
        rel = fp16_file(component)
        staged = tx.path(rel)
        external = convert_to_fp16(
            bundle.path(source.file), staged, upcast_attention=_upcast_attention(bundle)
        )
        session = cpu_session(staged)
        checks = tuple(
            errors(session.run(None, case), want, case)
            for case, want in zip(cases, expected, strict=True)
        )
        del session
        result = verification(checks, "fp16", reference=f"fp32 ONNX ({source.file})")
        if not result.passed:
            raise EngineError(
                f"the fp16 {component} differs from its fp32 model by "
                f"{result.max_rel_error:.3g} (relative; tolerance {result.rel_tolerance:g}), "
                "so fp16 is not safe for it",
                "Build --precision int8 or fp8 from Q/DQ models, or use classic TensorRT "
                "8.6/10, which keeps fp32 where fp16 would overflow",
            )
        inputs, outputs = io_specs(staged)
        extra = tuple(f"{component}/{p.name}" for p in external)
        entry = ModelEntry(
            file=rel,
            precision="fp16",
            inputs=inputs,
            outputs=outputs,
            external_data=extra,
            verification=result,
        )
        tx.put_model(component, entry)


def _upcast_attention(bundle: Bundle) -> bool:
    """Whether the U-Net's config asks for fp32 attention scores (SD 2.1 does)."""
    config = bundle.path("unet/config.json")
    if not config.is_file():
        return False
    return bool(json.loads(config.read_text(encoding="utf-8")).get("upcast_attention", False))


def check_inputs(bundle: Bundle, component: str) -> list[dict[str, np.ndarray]]:
    """CHECK_CALLS sets of inputs: recorded calibration calls if the bundle has them, else
    seeded random ones at the model's default size (real token ids for the text encoder)."""
    calibration = bundle.manifest.calibration
    if calibration is not None and component in calibration.inputs:
        files = calibration.inputs[component]
        bundle.verify(list(files.values()))
        arrays = {name: np.load(bundle.path(f), mmap_mode="r") for name, f in files.items()}
        count = min(len(a) for a in arrays.values())
        picks = np.unique(np.linspace(0, count - 1, CHECK_CALLS).round().astype(int))
        return [{n: np.ascontiguousarray(a[i]) for n, a in arrays.items()} for i in picks]
    rng = np.random.default_rng(CHECK_SEED)
    entry = bundle.model(component, "fp32")
    tokenize = None
    if any(spec.name == "input_ids" for spec in entry.inputs):
        tok = bundle.manifest.tokenizer
        tokenize = PromptTokenizer(bundle.path(tok.file), tok.max_length, tok.pad_token_id)
    return [
        _random_inputs(bundle, entry.inputs, None if tokenize is None else tokenize([prompt]), rng)
        for prompt in _CHECK_PROMPTS
    ]


def _random_inputs(
    bundle: Bundle,
    specs: tuple[TensorSpec, ...],
    ids: np.ndarray | None,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    size = bundle.manifest.model.sample_size
    dims = {"batch": 1}
    feeds = {}
    for spec in specs:
        shape = tuple(d if isinstance(d, int) else dims.get(d, size) for d in spec.shape)
        dtype = np.dtype(spec.dtype)
        if spec.name == "input_ids" and ids is not None:
            feeds[spec.name] = ids.astype(dtype)
        elif spec.name == "timestep":
            train_steps = int(bundle.manifest.scheduler.get("num_train_timesteps", 1000))
            feeds[spec.name] = rng.integers(0, train_steps, shape).astype(dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
    return feeds
