"""The lean runtime: numpy + tokenizers + one backend; no torch, diffusers or transformers."""

from edgediff.bundle.reader import Bundle
from edgediff.runtime.pipeline import Models, Pipeline
from edgediff.runtime.request import GenerationRequest

__all__ = ["Bundle", "GenerationRequest", "Models", "Pipeline"]
