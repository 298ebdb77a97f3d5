"""Distillation (PyTorch): guidance distillation folds classifier-free guidance into one U-Net
pass; progressive distillation halves the DDIM steps per round. Needs the [train] extra."""
