"""The bundle's tokenizer: the `tokenizers` JSON the runtime reads, plus the checkpoint's files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edgediff.bundle.files import atomic_path, atomic_write_text
from edgediff.bundle.schema import TokenizerConfig
from edgediff.errors import ExportError

TOKENIZER_JSON = "tokenizer/tokenizer.json"

# Prompts the exported tokenizer must encode exactly as transformers does: ordinary, empty,
# longer than any max_length, odd spacing and case.
CHECK_PROMPTS = (
    "a red circle at the top left",
    "",
    "a photo of an astronaut riding a horse on a mountain lake at sunset " * 8,
    "  Big   BLUE square,  left!  ",
)


def backend_json(tokenizer: Any, source_dir: Path) -> str:
    """The transformers tokenizer as `tokenizers` JSON, without padding/truncation state."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        # transformers 4 loads vocab.json/merges.txt folders as the slow (pure Python) tokenizer.
        from transformers import CLIPTokenizerFast

        backend = CLIPTokenizerFast.from_pretrained(str(source_dir)).backend_tokenizer
    # Padding and truncation are applied by the runtime from TokenizerConfig, not baked in.
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy.to_str(pretty=True)


def encode_like_runtime(
    path: Path, prompts: list[str], max_length: int, pad_id: int
) -> list[list[int]]:
    """Token ids the runtime will compute from the bundle's tokenizer.json."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(length=max_length, pad_id=pad_id)
    return [e.ids for e in tok.encode_batch(prompts)]


def encode_like_transformers(
    tokenizer: Any, prompts: list[str], max_length: int
) -> list[list[int]]:
    """Token ids as diffusers' StableDiffusionPipeline computes them."""
    return [
        list(ids)
        for ids in tokenizer(
            prompts, padding="max_length", max_length=max_length, truncation=True
        ).input_ids
    ]


def _write_vocab_and_merges(tokenizer_json: Path, skip: set[str]) -> list[str]:
    """vocab.json + merges.txt from tokenizer.json's BPE model, where the checkpoint lacks them.

    transformers 5 saves only tokenizer.json, but transformers 4's CLIPTokenizer (which optimum's
    ONNX pipelines load) reads vocab.json and merges.txt.
    """
    model = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]
    if model.get("type") != "BPE":
        return []
    written = []
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    files = {
        "vocab.json": json.dumps(model["vocab"], ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
    }
    for name, text in files.items():
        if f"tokenizer/{name}" not in skip:
            atomic_write_text(tokenizer_json.parent / name, text)
            written.append(f"tokenizer/{name}")
    return written


def write_tokenizer(
    tokenizer: Any, source_dir: Path, bundle_root: Path, max_length: int
) -> TokenizerConfig:
    """Write tokenizer/tokenizer.json and copy the checkpoint's tokenizer files beside it."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ExportError(
            f"the tokenizer in '{source_dir}' has no pad token, so prompts cannot be padded",
            "Set pad_token in tokenizer/tokenizer_config.json (SD uses <|endoftext|>)",
        )
    out = bundle_root / TOKENIZER_JSON
    atomic_write_text(out, backend_json(tokenizer, source_dir))
    originals = []
    for src in sorted(source_dir.iterdir()):
        # tokenizer.json is regenerated above from what transformers actually loaded.
        if src.is_file() and not src.name.startswith(".") and src.name != "tokenizer.json":
            with atomic_path(out.parent / src.name) as tmp:
                shutil.copyfile(src, tmp)
            originals.append(f"tokenizer/{src.name}")
    originals += _write_vocab_and_merges(out, skip=set(originals))
    prompts = list(CHECK_PROMPTS)
    if encode_like_runtime(out, prompts, max_length, pad_id) != encode_like_transformers(
        tokenizer, prompts, max_length
    ):
        raise ExportError(
            f"the tokenizer converted from '{source_dir}' encodes prompts differently from "
            "transformers",
            "Save the checkpoint's tokenizer with a recent transformers (it writes tokenizer.json)",
        )
    return TokenizerConfig(
        file=TOKENIZER_JSON,
        max_length=max_length,
        pad_token_id=int(pad_id),
        original_files=tuple(originals),
    )
