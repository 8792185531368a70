"""yolov9-qat: YOLOv9 / GELAN detectors from checkpoint to INT8 TensorRT engine with QAT."""

__version__ = "0.1.0"
