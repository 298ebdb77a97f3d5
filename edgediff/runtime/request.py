"""What one generation asks for, and the one place its defaults are written.

The CLI, the Python API, the C API (`edgediff_request_defaults`, via the library's build) and
the C++ wrapper all take steps, guidance, eta and the seed policy from here; so do output file
names and the provenance record written into each PNG.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgediff import __version__
from edgediff.bundle.reader import Bundle
from edgediff.bundle.schema import Manifest

# For a bundle that recommends none (an undistilled model, guided with two U-Net passes a step):
# picked for the shapes teacher on prompts `edgediff eval` does not report (README, "The shipped
# model"), 8 DDIM steps with guidance 3 is where its accuracy stops improving.
DEFAULT_STEPS = 8
DEFAULT_GUIDANCE = 3.0
# What the C API's float says for "the bundle's recommended guidance" (C has no None).
C_RECOMMENDED_GUIDANCE = -1.0
DEFAULT_ETA = 0.0  # deterministic DDIM
DEFAULT_COUNT = 1
# How far image-to-image departs from its image: diffusers' img2img default is 0.8, its
# inpainting's 1.0 (the masked region starts from pure noise).
DEFAULT_STRENGTH = 0.75
DEFAULT_INPAINT_STRENGTH = 1.0
DEFAULT_OUTPUT = Path("image.png")
# The VAE's own decoder unless asked; "tiny" is the stand-in `edgediff distill` trains.
DECODERS = ("full", "tiny")
DEFAULT_DECODER = "full"
# A seed left unset is drawn below this bound, then printed and recorded, so any image can be
# made again; 2**31 keeps it an int32 for every binding.
NEW_SEED_BOUND = 2**31


def recommended_steps(manifest: Manifest) -> int:
    """The DDIM steps a bundle makes when none are asked for."""
    return manifest.recommended_steps or DEFAULT_STEPS


def recommended_guidance(bundle: Bundle, steps: int | None = None) -> float:
    """The guidance scale a bundle generates `steps` steps with (None: its recommended count)
    when none is asked for.

    A bundle's recommendation is for U-Nets of the kind its recommended step count runs:
    distilled students guide best at another scale than the teacher a bundle may keep beside
    them (the shipped 4-step teacher: 93.8 % all-four right at 3, 59 % at the students' 5), so
    a U-Net of the other kind gets DEFAULT_GUIDANCE.
    """
    recommended = bundle.manifest.recommended_guidance
    if recommended is None or steps is None:
        return DEFAULT_GUIDANCE if recommended is None else recommended
    reference = bundle.unet_for(recommended_steps(bundle.manifest))
    running = bundle.unet_for(steps)
    same_kind = bundle.guidance_embedded(running) == bundle.guidance_embedded(reference)
    return recommended if same_kind else DEFAULT_GUIDANCE


def default_strength(masked: bool) -> float:
    """The strength of an image-to-image call that asks for none (inpainting when `masked`)."""
    return DEFAULT_INPAINT_STRENGTH if masked else DEFAULT_STRENGTH


def new_seed() -> int:
    """A fresh seed for a request that gave none."""
    return secrets.randbelow(NEW_SEED_BOUND)


def output_paths(out: Path, count: int) -> list[Path]:
    """The files `count` images go to: `out` itself for one, NAME-0.png ... for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


@dataclass(frozen=True)
class SourceImage:
    """The picture an image-to-image or inpainting request edits, and how far it may depart."""

    image: Any  # a PIL image or an H×W×3 array (runtime.image_inputs)
    image_sha256: str  # of the image file's bytes, recorded in the PNGs
    mask: Any = None  # None: image-to-image; else white repaints, black keeps
    mask_sha256: str | None = None
    strength: float | None = None  # None: default_strength(mask is not None)

    def record(self) -> dict[str, Any]:
        """What the PNGs record of it."""
        masked = self.mask is not None
        strength = default_strength(masked) if self.strength is None else self.strength
        record = {"image_sha256": self.image_sha256, "strength": strength}
        if self.mask is not None:
            record["mask_sha256"] = self.mask_sha256
        return record


@dataclass(frozen=True)
class GenerationRequest:
    """One generation request, as every front end describes it."""

    prompt: str
    negative_prompt: str | None = None
    steps: int | None = None  # None: the bundle's recommended count (DEFAULT_STEPS if none)
    guidance: float | None = None  # None: the bundle's recommended scale (DEFAULT_GUIDANCE)
    eta: float = DEFAULT_ETA
    seed: int | None = None  # None: new_seed(), recorded in the provenance
    height: int | None = None  # None: the model's default size
    width: int | None = None
    count: int = DEFAULT_COUNT
    source: SourceImage | None = None  # None: text to image

    def with_seed(self) -> GenerationRequest:
        """This request with its seed fixed (a new one if it had none)."""
        return self if self.seed is not None else replace(self, seed=new_seed())

    def pipeline_arguments(self) -> dict[str, Any]:
        """Keyword arguments of Pipeline.__call__ for this request."""
        arguments = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
            "eta": self.eta,
            "height": self.height,
            "width": self.width,
            "num_images_per_prompt": self.count,
            "seed": self.seed,
        }
        if self.source is not None:
            arguments["image"] = self.source.image
            arguments["mask_image"] = self.source.mask
            arguments["strength"] = self.source.strength
        return arguments

    def provenance(
        self,
        *,
        steps: int,
        guidance: float,
        height: int,
        width: int,
        bundle: str,
        backend: str,
        precision: str | None,
    ) -> dict[str, Any]:
        """The record stored in each PNG's text chunk: enough to make the image again."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "steps": steps,
            "guidance": guidance,
            "eta": self.eta,
            "seed": self.seed,
            "height": height,
            "width": width,
            "bundle": bundle,
            "backend": backend,
            "precision": precision or "default",
            "edgediff": __version__,
            **({} if self.source is None else self.source.record()),
        }


def c_defaults() -> dict[str, float | int]:
    """The defaults of the C API's edgediff_request, as the library's build compiles them in.

    C has no None: steps 0 asks for the bundle's recommended count and a negative guidance for
    its recommended scale, both decided at run time.
    """
    return {"steps": 0, "guidance": C_RECOMMENDED_GUIDANCE, "count": DEFAULT_COUNT, "seed": 0}
