"""Data with no model behind it: the captioned shapes stream (numpy + Pillow, no torch)."""
