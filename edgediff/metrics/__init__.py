"""Shared measures (numpy, and ONNX Runtime for the evaluator): PSNR, SSIM, attribute accuracy,
KID, latency. Calibration, the bench and the trainers all score with these."""
