"""ONNX export of (quantized) models: plain and end-to-end graphs, Q/DQ placement lint, and the
uint8 rewrite of activation Q/DQ for ONNX Runtime on x86."""
