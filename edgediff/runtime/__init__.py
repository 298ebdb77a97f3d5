"""The lean runtime: numpy + tokenizers + one backend; no torch, diffusers or transformers."""

from edgediff.bundle.reader import Bundle
from edgediff.runtime.pipeline import Pipeline

__all__ = ["Bundle", "Pipeline"]
