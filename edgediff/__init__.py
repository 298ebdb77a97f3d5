"""edgediff: Stable-Diffusion-shaped models from PyTorch to fast, quantised inference on devices."""

__version__ = "0.1.0"
