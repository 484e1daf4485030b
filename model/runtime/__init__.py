"""Inference backends (eager PyTorch, ONNX Runtime) and ONNX export of the network."""
