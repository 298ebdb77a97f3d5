"""ONNX graph tools shared by export and the engine builder: onnx + onnxruntime, no torch.

Export makes fp16 models while it has the checkpoint; `edgediff build` makes them later, from
a bundle's fp32 models, on machines that have no torch. Both use the same code, from here.
"""
