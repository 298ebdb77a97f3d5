"""Optimisation profiles: the min/opt/max shape of every dynamic input, from batch and size ranges.

TensorRT optimises an engine for the `opt` shape and accepts anything between `min` and `max`.
A user thinks in images per call and image sizes; the graphs think in symbolic dims. The
text encoder and U-Net see the classifier-free-guidance batch, [uncond; cond], which is twice
the images of a guided call and equal to them in an unguided one (guidance <= 1), so their
batch runs from MIN to 2·MAX and is optimised at 2·OPT. The text length is fixed by the bundle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edgediff.bundle.schema import ModelConfig, TensorSpec, kind_of
from edgediff.errors import InputError


@dataclass(frozen=True)
class Span:
    """An integer range MIN:OPT:MAX."""

    min: int
    opt: int
    max: int

    def check(self, what: str, multiple: int = 1) -> Span:
        """Self, after checking 0 < min <= opt <= max, each a multiple of `multiple`."""
        values = (self.min, self.opt, self.max)
        if not 0 < self.min <= self.opt <= self.max:
            raise InputError(
                f"{what} {self} must satisfy 0 < MIN <= OPT <= MAX",
                f"e.g. --{what} {self.min}:{self.min}:{max(values)}",
            )
        bad = [v for v in values if v % multiple]
        if bad:
            raise InputError(
                f"{what} {bad[0]} is not a multiple of {multiple}, which this model needs",
                f"Round each value to a multiple of {multiple}",
            )
        return self

    def fixed(self) -> Span:
        """The static range at OPT: MIN = OPT = MAX."""
        return Span(self.opt, self.opt, self.opt)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


def parse_span(text: str, what: str) -> Span:
    """'4' -> 4:4:4, '1:2:4' -> 1:2:4; anything else is a one-line error."""
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise InputError(
            f"--{what} '{text}' is not N or MIN:OPT:MAX", f"e.g. --{what} 1:1:4 or --{what} 2"
        )
    return Span(*values)


@dataclass(frozen=True)
class SizeRange:
    """Image heights and widths an engine accepts, in pixels."""

    height: Span
    width: Span

    def __str__(self) -> str:
        if self.height == self.width:
            return str(self.height)
        return ":".join(
            f"{h}x{w}" for h, w in zip(_values(self.height), _values(self.width), strict=True)
        )


def _values(span: Span) -> tuple[int, int, int]:
    return span.min, span.opt, span.max


def parse_size(text: str) -> SizeRange:
    """'512', '256:512:768', '512x768' or '256x256:512x768:768x1024' (HxW) -> SizeRange."""
    parts = text.split(":")
    if len(parts) == 1:
        parts *= 3
    try:
        if len(parts) != 3:
            raise ValueError
        pairs = [p.split("x") if "x" in p else [p, p] for p in parts]
        heights, widths = zip(*((int(h), int(w)) for h, w in pairs), strict=True)
    except ValueError:
        raise InputError(
            f"--size '{text}' is not SIZE, MIN:OPT:MAX or HxW:HxW:HxW",
            "e.g. --size 512, --size 256:512:768 or --size 512x768",
        ) from None
    return SizeRange(Span(*heights), Span(*widths))


# Each component's symbolic dims, and which range each one follows.
_DIMS: dict[str, dict[str, str]] = {
    "text_encoder": {"batch": "guided_batch"},
    "unet": {"batch": "guided_batch", "height": "latent_height", "width": "latent_width"},
    "vae_decoder": {
        "batch": "batch",
        "latent_height": "latent_height",
        "latent_width": "latent_width",
    },
    # Image-to-image and inpainting encode one image per prompt, in pixels.
    "vae_encoder": {"batch": "batch", "height": "pixel_height", "width": "pixel_width"},
}
PROFILED_KINDS = tuple(_DIMS)


def profiled_components(components: Iterable[str]) -> list[str]:
    """The components of a bundle that get engines: every one of a profiled kind, variants
    (unet.steps-2) included."""
    return [c for c in components if kind_of(c) in PROFILED_KINDS]


# input name -> (min shape, opt shape, max shape)
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def dim_spans(batch: Span, size: SizeRange, config: ModelConfig, static: bool) -> dict[str, Span]:
    """The range of every kind of dim, in the graphs' units (latent or image pixels, CFG
    batch)."""
    batch.check("batch")
    size.height.check("size", config.size_multiple)
    size.width.check("size", config.size_multiple)
    f = config.vae_scale_factor
    spans = {
        "batch": batch,
        "guided_batch": Span(batch.min, 2 * batch.opt, 2 * batch.max),
        "latent_height": Span(*(v // f for v in _values(size.height))),
        "latent_width": Span(*(v // f for v in _values(size.width))),
        "pixel_height": size.height,
        "pixel_width": size.width,
    }
    return {k: s.fixed() for k, s in spans.items()} if static else spans


def component_profile(
    component: str, inputs: tuple[TensorSpec, ...], spans: dict[str, Span]
) -> Profile:
    """min/opt/max shapes of each of a component's inputs that has a symbolic dim."""
    dims = _DIMS.get(kind_of(component))
    if dims is None:
        raise InputError(f"no engine profile is defined for '{component}'")
    if any(spec.name == "guidance" for spec in inputs):
        # A guidance-distilled U-Net runs once on the images' batch, not on [uncond; cond].
        dims = {**dims, "batch": "batch"}
    profile: Profile = {}
    for spec in inputs:
        if all(isinstance(d, int) for d in spec.shape):
            continue  # fully static: TensorRT needs no profile entry
        per_dim = []
        for d in spec.shape:
            if isinstance(d, int):
                per_dim.append(Span(d, d, d))
            elif d in dims:
                per_dim.append(spans[dims[d]])
            else:
                raise InputError(
                    f"{component} input '{spec.name}' has a dim '{d}' edgediff cannot size",
                    "Re-export the bundle with this edgediff version",
                )
        profile[spec.name] = tuple(
            tuple(getattr(s, k) for s in per_dim) for k in ("min", "opt", "max")
        )
    return profile
