"""Export: a diffusers Stable Diffusion checkpoint -> a verified ONNX bundle (PyTorch + onnx)."""

from edgediff.export.bundle_writer import export_checkpoint

__all__ = ["export_checkpoint"]
