"""Quantization: Q/DQ placement rules, calibration (PTQ), QAT fine-tuning, sensitivity, checkpoints.

Modules: :mod:`~yolov9_qat.quant.rules` (the placement rules, as data), :mod:`.quantize` (insert and
calibrate quantizers), :mod:`.qat` (fine-tuning against the float model), :mod:`.io` (QAT
checkpoints), :mod:`.sensitivity` (per-layer analysis), :mod:`.pipeline` (the ``quantize`` /
``eval`` / ``sensitive`` commands).
"""
