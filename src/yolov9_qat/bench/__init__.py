"""Latency / throughput harness shared by every backend (ONNX Runtime, TensorRT)."""
