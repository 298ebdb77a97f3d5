"""Trainers for the tiny shapes models (VAE, CLIP text encoder, U-Net) and the recipe."""
