"""The two request dialects the server speaks, as they name their fields, to one
GenerationRequest; and their answers.

OpenAI's Images API (`POST /v1/images/generations`) and AUTOMATIC1111's (`POST
/sdapi/v1/txt2img` and `/sdapi/v1/img2img`) are what existing clients already send. Fields
edgediff cannot honour are refused by name rather than silently ignored, except A1111's many
UI-only fields, which A1111 itself ignores when absent from its model; those are reported back
in `info`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
import time
from typing import Any, Literal

from PIL import ImageOps
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from edgediff.errors import InputError
from edgediff.runtime.image_inputs import image_from_bytes
from edgediff.runtime.request import (
    DEFAULT_ETA,
    DEFAULT_STRENGTH,
    GenerationRequest,
    SourceImage,
    new_seed,
)
from edgediff.runtime.request_checks import MAX_GUIDANCE, MAX_SEED
from edgediff.serve.batches import Outcome

MAX_PROMPT_CHARS = 10_000  # CLIP reads 77 tokens; this only bounds what a body can make us hold
MAX_STEPS = 1000  # DDPM's training steps: DDIM cannot take more
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")

Steps = Field(default=None, ge=1, le=MAX_STEPS, description="DDIM steps (default: the model's)")
Guidance = Field(
    default=None,
    ge=0.0,
    le=MAX_GUIDANCE,
    allow_inf_nan=False,
    strict=True,
    description="Classifier-free guidance scale (default: the model's recommended scale)",
)


class OpenAIImageRequest(BaseModel):
    """POST /v1/images/generations, as OpenAI's Images API names the fields."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    n: StrictInt = Field(default=1, ge=1, description="Images to make (at most --max-batch)")
    size: str = Field(default="auto", description='"WIDTHxHEIGHT" in pixels, or "auto"')
    response_format: Literal["b64_json", "url"] = "b64_json"
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    steps: StrictInt | None = Steps
    guidance_scale: float | None = Guidance
    seed: StrictInt | None = Field(default=None, ge=0, le=MAX_SEED)
    # OpenAI's own fields that change nothing here; accepted so stock clients work.
    model: str | None = None
    user: str | None = None
    quality: str | None = None
    style: str | None = None
    output_format: Literal["png"] | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        if value != "auto" and not _SIZE.match(value):
            raise ValueError(f'must be "WIDTHxHEIGHT" such as "512x512", or "auto", got {value!r}')
        return value

    @field_validator("response_format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value == "url":
            raise ValueError(
                '"url" is not served: edgediff keeps no image store; ask for "b64_json"'
            )
        return value

    def generation(self) -> GenerationRequest:
        """The request edgediff runs (seed drawn if none was given)."""
        width = height = None
        if self.size != "auto":
            width, height = (int(v) for v in self.size.split("x"))
        return GenerationRequest(
            self.prompt,
            negative_prompt=self.negative_prompt,
            steps=self.steps,
            guidance=self.guidance_scale,
            seed=self.seed,
            height=height,
            width=width,
            count=self.n,
        ).with_seed()


def openai_response(outcome: Outcome) -> dict[str, Any]:
    """OpenAI's ImagesResponse, with the seed and the PNGs' parameters beside it."""
    return {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(png).decode("ascii")} for png in outcome.pngs],
        "seed": outcome.parameters["seed"],
        "parameters": outcome.parameters,
    }


class A1111Txt2ImgRequest(BaseModel):
    """POST /sdapi/v1/txt2img, as AUTOMATIC1111's web UI API names the fields.

    Its seed makes the whole batch from one generator, as `edgediff generate -n` does, where
    A1111 gives image i the seed seed + i.
    """

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    steps: StrictInt | None = Steps
    cfg_scale: float | None = Guidance
    width: StrictInt | None = Field(default=None, ge=1, description="Pixels (default: model's)")
    height: StrictInt | None = Field(default=None, ge=1, description="Pixels (default: model's)")
    seed: StrictInt = Field(default=-1, ge=-1, le=MAX_SEED, description="-1: a new one")
    batch_size: StrictInt = Field(default=1, ge=1)
    n_iter: StrictInt = Field(default=1, ge=1, description="Batches (images: batch_size × n_iter)")
    eta: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False, strict=True)
    sampler_name: str | None = None
    sampler_index: str | None = None

    def ignored(self) -> list[str]:
        """Fields sent that edgediff does not use."""
        return sorted(self.model_extra or {})

    def generation(self) -> GenerationRequest:
        """The request edgediff runs (seed drawn if -1)."""
        return GenerationRequest(
            self.prompt,
            negative_prompt=self.negative_prompt or None,
            steps=self.steps,
            guidance=self.cfg_scale,
            eta=DEFAULT_ETA if self.eta is None else self.eta,
            seed=new_seed() if self.seed == -1 else self.seed,
            height=self.height,
            width=self.width,
            count=self.batch_size * self.n_iter,
        )


class A1111Img2ImgRequest(A1111Txt2ImgRequest):
    """POST /sdapi/v1/img2img: txt2img's fields and the picture to edit (and its mask)."""

    init_images: list[str] = Field(
        min_length=1, max_length=1, description="One base64 PNG or JPEG (a data: URL is fine)"
    )
    mask: str | None = Field(default=None, description="Base64 mask: white repaints, black keeps")
    denoising_strength: float = Field(
        default=DEFAULT_STRENGTH, ge=0.0, le=1.0, allow_inf_nan=False, strict=True
    )
    inpainting_mask_invert: Literal[0, 1] = Field(default=0, description="1: black repaints")

    def generation(self) -> GenerationRequest:
        """The edit edgediff runs (seed drawn if -1)."""
        image_bytes = _base64_field(self.init_images[0], "init_images[0]")
        mask = mask_bytes = None
        if self.mask is not None:
            mask_bytes = _base64_field(self.mask, "mask")
            mask = image_from_bytes(mask_bytes, "mask").convert("L")
            if self.inpainting_mask_invert:
                mask = ImageOps.invert(mask)
        source = SourceImage(
            image=image_from_bytes(image_bytes, "init_images[0]"),
            image_sha256=hashlib.sha256(image_bytes).hexdigest(),
            mask=mask,
            mask_sha256=None if mask_bytes is None else hashlib.sha256(mask_bytes).hexdigest(),
            strength=self.denoising_strength,
        )
        return dataclasses.replace(super().generation(), source=source)


def _base64_field(text: str, name: str) -> bytes:
    """Base64 text (perhaps a data: URL) as bytes, or a one-line error naming the field."""
    _, comma, payload = text.partition(",")
    if not (comma and text.startswith("data:")):
        payload = text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{name} is not base64 text") from None


def a1111_response(body: A1111Txt2ImgRequest, outcome: Outcome) -> dict[str, Any]:
    """A1111's TextToImageResponse: base64 PNGs, the parameters asked, and `info` (JSON text)
    with what was run."""
    record = outcome.parameters
    count = len(outcome.pngs)
    info = {
        "prompt": record["prompt"],
        "all_prompts": [record["prompt"]] * count,
        "negative_prompt": record["negative_prompt"] or "",
        "seed": record["seed"],
        "all_seeds": [record["seed"]] * count,
        "steps": record["steps"],
        "cfg_scale": record["guidance"],
        "width": record["width"],
        "height": record["height"],
        "sampler_name": "DDIM",
        "batch_size": count,
        "ignored_fields": body.ignored(),
        "edgediff": record,
    }
    return {
        "images": [base64.b64encode(png).decode("ascii") for png in outcome.pngs],
        # The request's fields as A1111 echoes them, less the pictures sent (not worth echoing).
        "parameters": body.model_dump(exclude={*(body.model_extra or {}), "init_images", "mask"}),
        "info": json.dumps(info),
    }
