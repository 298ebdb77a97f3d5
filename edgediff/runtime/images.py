"""Decoded VAE output -> images, and PNG files that remember how they were made."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgediff.bundle.files import atomic_write_bytes


def to_images(decoded: np.ndarray) -> np.ndarray:
    """VAE output in [-1, 1], NCHW -> float32 images in [0, 1], NHWC."""
    images = np.clip((decoded.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)
    return images.transpose(0, 2, 3, 1)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8, rounded as diffusers' numpy_to_pil does."""
    return (images * 255).round().astype(np.uint8)


def to_pil(images: np.ndarray) -> list:
    """Float NHWC images in [0, 1] -> PIL images."""
    from PIL import Image

    return [Image.fromarray(image) for image in to_uint8(images)]


def encode_png(image: Any, parameters: dict[str, Any] | None = None) -> bytes:
    """A PIL image as PNG bytes, generation parameters in a text chunk: what save_png writes
    and what the server sends, byte for byte."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", json.dumps(parameters, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image: Any, path: str | Path, parameters: dict[str, Any] | None = None) -> Path:
    """Write a PIL image as PNG (all-or-nothing), generation parameters in a text chunk."""
    path = Path(path)
    atomic_write_bytes(path, encode_png(image, parameters))
    return path


def read_png_parameters(path: str | Path) -> dict[str, Any]:
    """The generation parameters stored in a PNG by save_png ({} if none)."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.text.get("parameters") if hasattr(image, "text") else None
    return json.loads(text) if text else {}
