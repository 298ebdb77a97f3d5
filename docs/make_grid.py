"""Draw the README's grid: a few prompts (rows) × seeds (columns) from a bundle.

python docs/make_grid.py [BUNDLE] --out docs/shapes-grid.png
"""

from __future__ import annotations

import argparse

from PIL import Image, ImageDraw, ImageFont

from edgediff.runtime import Pipeline
from edgediff.runtime.images import to_uint8

PROMPTS = [
    "a big red circle on the left",
    "a small blue square at the top",
    "a big yellow star in the center",
    "a small white triangle on the right",
    "a big purple cross at the bottom",
    "a big green circle in the middle",  # a held-out colour+shape pair
]


def grid(pipe: Pipeline, seeds: int, scale: int) -> Image.Image:
    """Rows of `seeds` images per prompt with the prompt written on the left."""
    label_w, cell = 300, 64 * scale
    canvas = Image.new("RGB", (label_w + seeds * cell, len(PROMPTS) * cell), (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=15)
    for row, prompt in enumerate(PROMPTS):
        images = pipe(prompt, num_images_per_prompt=seeds, seed=row, output_type="np")
        for col, image in enumerate(images):
            tile = Image.fromarray(to_uint8(image))
            canvas.paste(
                tile.resize((cell, cell), Image.Resampling.NEAREST),
                (label_w + col * cell, row * cell),
            )
        draw.text((8, row * cell + cell // 2 - 8), prompt, fill=(0, 0, 0), font=font)
    return canvas


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", nargs="?", default=None)
    parser.add_argument("--out", default="docs/shapes-grid.png")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--scale", type=int, default=2)
    args = parser.parse_args()
    with Pipeline.load(args.bundle) as pipe:
        grid(pipe, args.seeds, args.scale).save(args.out)
        steps, guidance = pipe.default_steps, pipe.default_guidance
    print(f"wrote {args.out} (guidance {guidance:g}, {steps} steps)")


if __name__ == "__main__":
    main()
