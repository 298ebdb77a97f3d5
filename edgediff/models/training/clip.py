"""CLIP stage: the text encoder learns, contrastively against a small image encoder, to place a
caption near the images it describes.

Many captions in a batch describe the same attributes in other words, so the targets are soft:
every image with the same four attributes counts as a match (plain InfoNCE would push true
matches apart). The image encoder flattens its last feature map instead of pooling it, so
position survives.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from edgediff.data import shapes
from edgediff.models.training.loop import Stage, cosine_lr, run_stage
from edgediff.models.training.recipes import ClipRecipe


class ImageEncoder(nn.Module):
    """64×64 image -> embedding: four stride-2 convolutions, then a linear map of the 4×4 map."""

    def __init__(self, embed_dim: int, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(chans):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.project = nn.Linear(chans[-1] * 4 * 4, embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings [N, embed_dim]."""
        return self.project(self.features(images).flatten(1))


class ClipHeads(nn.Module):
    """What the contrastive loss trains beside the text encoder, discarded afterwards."""

    def __init__(self, text_dim: int, embed_dim: int):
        super().__init__()
        self.image = ImageEncoder(embed_dim)
        self.text_projection = nn.Linear(text_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids [N, max_length], padded and truncated as the runtime does."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids  # fmt: skip


def contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, same: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric cross-entropy of cosine similarities against soft targets `same` (N×N, 0/1)."""
    logits = scale.exp().clamp(max=100) * F.normalize(image_emb) @ F.normalize(text_emb).T
    targets = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T)) / 2


def _same_attributes(attrs: list[shapes.Attributes]) -> torch.Tensor:
    keys = [a.as_tuple() for a in attrs]
    return torch.tensor([[float(a == b) for b in keys] for a in keys])


def train_clip(
    text_encoder, tokenizer, recipe: ClipRecipe, work_dir: Path, seed: int, progress: bool = True
) -> ClipHeads:
    """Train `text_encoder` in place (resuming from `work_dir`); returns the image side too."""
    heads = ClipHeads(text_encoder.config.hidden_size, recipe.embed_dim)
    text_encoder.train()
    params = [*text_encoder.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.01)
    data_seed = seed + 10_000  # other images than the VAE stage saw

    def step(k: int) -> float:
        for group in opt.param_groups:
            group["lr"] = recipe.lr * cosine_lr(k, recipe.steps, warmup=30)
        images, attrs, captions = shapes.batch(data_seed, k * recipe.batch_size, recipe.batch_size)
        text = text_encoder(tokenize(tokenizer, captions)).pooler_output
        loss = contrastive_loss(
            heads.image(torch.from_numpy(images)),
            heads.text_projection(text),
            _same_attributes(attrs),
            heads.logit_scale,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    state = {"text_encoder": text_encoder, "heads": heads, "opt": opt}
    run_stage(
        Stage("clip", recipe.steps, step, state, recipe.checkpoint_every), work_dir, seed, progress
    )
    text_encoder.eval()
    heads.eval()
    return heads


@torch.no_grad()
def retrieval_accuracy(
    text_encoder, tokenizer, heads: ClipHeads, seed: int, n: int = 500
) -> dict[str, float]:
    """Per-attribute accuracy of picking, for fresh images, the best of all canonical captions."""
    candidates = shapes.all_attributes()
    text = text_encoder(tokenize(tokenizer, [shapes.canonical_caption(a) for a in candidates]))
    text_emb = F.normalize(heads.text_projection(text.pooler_output))
    images, attrs, _ = shapes.batch(seed + 20_000, 0, n, held_out="include")
    image_emb = F.normalize(heads.image(torch.from_numpy(images)))
    best = (image_emb @ text_emb.T).argmax(1).tolist()
    picked = [candidates[i].as_tuple() for i in best]
    truth = [a.as_tuple() for a in attrs]
    return {
        name: float(np.mean([p[i] == t[i] for p, t in zip(picked, truth, strict=True)]))
        for i, name in enumerate(shapes.ATTRIBUTES)
    }
