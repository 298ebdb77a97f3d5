"""What a bench measures: one configuration is a backend, a precision, a step count and a
decoder."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from edgediff.bundle.reader import Bundle
from edgediff.bundle.schema import TINY_DECODER, kind_of
from edgediff.errors import InputError
from edgediff.runtime.request import DECODERS, DEFAULT_DECODER

# An undistilled U-Net's usual range; beside students, the counts they are compared against.
UNDISTILLED_STEPS, TEACHER_STEPS = (2, 4, 8, 16), (4, 8)

# Accuracy is measured against fp32 on ONNX Runtime CPU: the most exact run everywhere.
REFERENCE_BACKEND, REFERENCE_PRECISION = "ort-cpu", "fp32"


@dataclass(frozen=True, order=True)
class Config:
    """One point of the bench."""

    backend: str
    precision: str
    steps: int
    decoder: str = DEFAULT_DECODER  # or "tiny": the bundle's tiny decoder (edgediff distill)

    @property
    def id(self) -> str:
        """Stable name of the configuration, the key of its row in report.json."""
        base = f"{self.backend}/{self.precision}/{self.steps}"
        return base if self.decoder == DEFAULT_DECODER else f"{base}/{self.decoder}"

    @property
    def reference(self) -> Config:
        """The configuration accuracy is measured against: fp32 on the CPU, same steps, the
        full decoder."""
        return Config(REFERENCE_BACKEND, REFERENCE_PRECISION, self.steps)


def parse_list(text: str, what: str) -> list[str]:
    """'a,b, c' -> ['a', 'b', 'c'] (duplicates dropped, order kept); empty is an error."""
    items = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not items:
        raise InputError(f"--{what} is empty", f"Give a comma-separated list, e.g. --{what} 2,4,8")
    return items


def parse_steps(text: str) -> list[int]:
    """'2,4,8' -> [2, 4, 8], each a positive integer."""
    items = parse_list(text, "steps")
    if not all(i.isdigit() and int(i) > 0 for i in items):
        raise InputError(f"--steps '{text}' must list positive integers", "e.g. --steps 2,4,8,16")
    return [int(i) for i in items]


def default_steps(bundle: Bundle) -> list[int]:
    """The step counts a bench of `bundle` measures unless told: every count its students were
    distilled for, and an undistilled U-Net's usual range (4 and 8 beside students)."""
    distilled: set[int] = set()
    for component in bundle.manifest.components:
        if kind_of(component) == "unet":
            record = bundle.model(component).distillation
            distilled |= set(record.steps) if record is not None else set()
    if bundle.model("unet").distillation is None:
        distilled |= set(TEACHER_STEPS if distilled else UNDISTILLED_STEPS)
    return sorted(distilled)


def default_decoders(bundle: Bundle) -> list[str]:
    """Every decoder the bundle has: the VAE's, and its tiny one if it has one."""
    has_tiny = TINY_DECODER in bundle.manifest.components
    return [DEFAULT_DECODER, "tiny"] if has_tiny else [DEFAULT_DECODER]


def expand(
    backends: list[str],
    precisions: list[str],
    steps: list[int],
    decoders: list[str] | tuple[str, ...] = (DEFAULT_DECODER,),
) -> list[Config]:
    """Every combination, references first (so accuracy can be measured as rows finish)."""
    for decoder in decoders:
        if decoder not in DECODERS:
            raise InputError(f"unknown decoder '{decoder}'", f"Use {' and/or '.join(DECODERS)}")
    configs = [
        Config(b, p, s, d)
        for b, p, s, d in itertools.product(backends, precisions, steps, decoders)
    ]
    references = [c.reference for c in configs]
    return list(dict.fromkeys(references + configs))
