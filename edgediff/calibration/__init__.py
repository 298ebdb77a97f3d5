"""Calibration and quantisation: record real inputs along sampling trajectories, write Q/DQ
models, measure per-layer sensitivity. Needs onnx and onnxruntime; never torch."""
