"""Images and masks a generation starts from: checked, sized, and turned into arrays as
diffusers' VaeImageProcessor turns them (RGB in [-1, 1]; masks binarised at 0.5).

The size rule: an image is used at its own size when that is a multiple of the model's size
factor; given `height` and `width`, it is resized to them (Lanczos, as diffusers resizes);
otherwise it is refused with the nearest sizes that would do. A mask must have its image's size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgediff.errors import InputError


def open_image(path: str | Path, name: str = "image") -> tuple[Any, str]:
    """A PNG/JPEG/... file as a PIL image and the sha256 of its bytes (what a PNG records of
    its source), read once; or a one-line error naming `name`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name} '{path}' does not exist")
    data = path.read_bytes()
    return image_from_bytes(data, f"{name} '{path}'"), hashlib.sha256(data).hexdigest()


def image_from_bytes(data: bytes, name: str = "image") -> Any:
    """An encoded image (PNG, JPEG, ...) as a PIL image, or a one-line error naming `name`."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.copy()
    except Image.DecompressionBombError:
        raise InputError(
            f"{name} has more pixels than Pillow will decode safely", "Send a smaller image"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(
            f"{name} is not an image Pillow can read ({type(e).__name__})", "Send a PNG or JPEG"
        ) from None


def _as_pil(value: Any, name: str, mode: str) -> Any:
    """A PIL image (any mode) or an array (H×W or H×W×C, uint8 or floats in [0, 1]) as a PIL
    image in `mode` ("RGB" or "L")."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert(mode)
    if not isinstance(value, np.ndarray):
        raise InputError(f"{name} must be a PIL image or a numpy array, got {type(value).__name__}")
    array = value
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InputError(f"{name} must be an H×W or H×W×3 array, got shape {array.shape}")
    if 0 in array.shape:
        raise InputError(f"{name} must not be empty, got shape {array.shape}")
    if array.dtype != np.uint8:
        if array.dtype.kind not in "fiu":
            raise InputError(f"{name} must hold numbers, got {array.dtype}")
        floats = array.astype(np.float64)
        if not np.isfinite(floats).all() or floats.min() < 0 or floats.max() > 1:
            raise InputError(f"{name} as floats must be finite values in [0, 1]")
        array = (floats * 255).round().astype(np.uint8)
    return Image.fromarray(array).convert(mode)


def _sized(image: Any, name: str, height: int | None, width: int | None, multiple: int) -> Any:
    """The image at the size the generation runs at (see the module's rule)."""
    from PIL import Image

    if height is None and width is None:
        w, h = image.size
        for side, value in (("height", h), ("width", w)):
            if value % multiple:
                lower = max(multiple, value - value % multiple)
                raise InputError(
                    f"{name} is {w}x{h}: its {side} {value} is not a multiple of {multiple}",
                    f"Crop it to e.g. {lower}, or pass height and width to resize it",
                )
        return image
    height = image.size[1] if height is None else height
    width = image.size[0] if width is None else width
    return image.resize((width, height), resample=Image.Resampling.LANCZOS)


def image_array(
    value: Any, count: int, height: int | None, width: int | None, multiple: int
) -> np.ndarray:
    """One image, or one per prompt (`count` prompts), as float32 N×3×H×W in [-1, 1]."""
    images = _one_per_prompt(value, count, "image")
    arrays = []
    for image in images:
        pil = _sized(_as_pil(image, "image", "RGB"), "image", height, width, multiple)
        arrays.append(np.asarray(pil, dtype=np.float32) / 255.0)
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise InputError(f"the images have different sizes {sorted(sizes)}", "Give equal sizes")
    batch = np.stack(arrays).transpose(0, 3, 1, 2)
    return batch * 2.0 - 1.0


def mask_array(value: Any, count: int, image_size: tuple[int, int], resized: bool) -> np.ndarray:
    """The mask (white: repaint, black: keep), one or one per prompt, as float32 N×1×H×W of
    0 and 1 at the image's size `image_size` (height, width)."""
    from PIL import Image

    masks = _one_per_prompt(value, count, "mask_image")
    height, width = image_size
    arrays = []
    for mask in masks:
        pil = _as_pil(mask, "mask_image", "L")
        if pil.size != (width, height) and not resized:
            raise InputError(
                f"mask_image is {pil.size[0]}x{pil.size[1]} but the image is {width}x{height}",
                "Give a mask of the image's size",
            )
        if pil.size != (width, height):
            pil = pil.resize((width, height), resample=Image.Resampling.LANCZOS)
        arrays.append(np.asarray(pil, dtype=np.float32) / 255.0)
    mask = np.stack(arrays)[:, None]
    return np.where(mask < 0.5, 0.0, 1.0).astype(np.float32)


def latent_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """A pixel mask at latent resolution: nearest neighbour, as torch's interpolate makes it."""
    h, w = mask.shape[2] // factor, mask.shape[3] // factor
    rows = np.minimum((np.arange(h) * (mask.shape[2] / h)).astype(np.int64), mask.shape[2] - 1)
    cols = np.minimum((np.arange(w) * (mask.shape[3] / w)).astype(np.int64), mask.shape[3] - 1)
    return mask[:, :, rows][:, :, :, cols]


def _one_per_prompt(value: Any, count: int, name: str) -> list:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        items = list(value)
        if len(items) not in (1, count):
            raise InputError(
                f"{len(items)} {name}s for {count} prompts", "Give one, or one per prompt"
            )
        return items * count if len(items) == 1 else items
    return [value] * count
