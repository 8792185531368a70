"""Inference backends: ONNX Runtime (CPU, CI) and TensorRT (GPU; engine build, cache, inspection)."""
