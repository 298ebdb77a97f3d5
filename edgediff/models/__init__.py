"""PyTorch side: presets, random-weight checkpoints, (later) trainers. Needs the [train] extra."""
