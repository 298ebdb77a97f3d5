"""Prompt -> CLIP token ids, through the `tokenizers` library (no transformers)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgediff.errors import BundleError

logger = logging.getLogger("edgediff")


class PromptTokenizer:
    """A CLIP BPE tokenizer that pads and truncates every prompt to the text encoder's length."""

    def __init__(self, tokenizer_file: str | Path, max_length: int, pad_token_id: int):
        from tokenizers import Tokenizer

        self.max_length = max_length
        self._tok = Tokenizer.from_file(str(tokenizer_file))
        vocabulary = self._tok.get_vocab_size()
        if not 0 <= pad_token_id < vocabulary:
            raise BundleError(
                f"the padding token id {pad_token_id} is not in the tokenizer's vocabulary "
                f"(ids 0 to {vocabulary - 1})",
                "Re-export the bundle with `edgediff export CHECKPOINT BUNDLE --force`",
            )
        self._tok.enable_truncation(max_length)
        pad_token = self._tok.id_to_token(pad_token_id) or ""
        self._tok.enable_padding(length=max_length, pad_id=pad_token_id, pad_token=pad_token)

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """Token ids, int64 [len(prompts), max_length]; warns about any text cut off."""
        encodings = self._tok.encode_batch(list(prompts))
        for prompt, enc in zip(prompts, encodings, strict=True):
            if enc.overflowing:
                # Same behaviour as diffusers: keep the head, say what was dropped.
                dropped = self._tok.decode(enc.overflowing[0].ids).strip()
                logger.warning(
                    "the prompt is longer than the text encoder's %d tokens; this part was "
                    "cut off: %r (prompt starts %r)",
                    self.max_length,
                    dropped,
                    prompt[:40],
                )
        return np.array([enc.ids for enc in encodings], dtype=np.int64)
