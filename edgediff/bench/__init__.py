"""Benchmarks without torch: the ONNX evaluator and the metrics computed from its readings."""
