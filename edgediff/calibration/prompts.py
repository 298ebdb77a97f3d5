"""The calibration prompts that ship with edgediff, and reading a user's prompt file.

The default set is shapes captions chosen so they never meet `edgediff eval`'s prompts: none
uses the canonical phrasing every evaluation prompt uses, and none describes an attribute set
the default evaluation draws. Regenerate the file with `python -m edgediff.calibration.prompts`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edgediff.errors import InputError

DEFAULT_PROMPTS = Path(__file__).resolve().parent / "prompts.txt"
CALIBRATION_SEED = 2  # eval reports use prompt seed 0, tuning used seed 1
DEFAULT_COUNT = 64


def make_default_prompts(n: int = DEFAULT_COUNT) -> list[str]:
    """`n` shapes captions disjoint from the default evaluation prompts, in a fixed order."""
    from edgediff.data import shapes
    from edgediff.data.shapes import EVAL_SEED, eval_prompts

    evaluated = {a.as_tuple() for a in eval_prompts(256, EVAL_SEED)}
    candidates = [a for a in shapes.all_attributes(False) if a.as_tuple() not in evaluated]
    rng = np.random.default_rng(CALIBRATION_SEED)
    chosen = rng.choice(len(candidates), size=n, replace=False)
    # Phrasing 0 is the canonical one evaluation uses: calibration uses all the others.
    return [
        shapes.caption(candidates[i], 1 + k % (shapes.NUM_PHRASINGS - 1))
        for k, i in enumerate(chosen)
    ]


def read_prompts(path: str | Path | None = None) -> list[str]:
    """One prompt per non-empty line (the shipped set if `path` is None)."""
    path = Path(path) if path is not None else DEFAULT_PROMPTS
    if not path.is_file():
        raise InputError(
            f"prompt file '{path}' does not exist", "Pass a text file with one prompt per line"
        )
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise InputError(f"prompt file '{path}' holds no prompts", "Write one prompt per line")
    return prompts


def prompts_sha256(prompts: list[str]) -> str:
    """Hash of a prompt list, recorded so a calibration names exactly what it sampled."""
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


if __name__ == "__main__":
    DEFAULT_PROMPTS.write_text("\n".join(make_default_prompts()) + "\n", encoding="utf-8")
    print(f"wrote {DEFAULT_PROMPTS}")
