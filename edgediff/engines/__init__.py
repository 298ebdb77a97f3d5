"""Engines: TensorRT (classic and RTX) builds of a bundle's models, planned, keyed and recorded."""
