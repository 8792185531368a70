"""Untrained models whose activations look like a trained model's: for speed measurements (the GPU
record's latency half, ``benchmarks/bench_ort.py``) and tests of quantization and export.

A random network whose every conv output is normalized to unit variance is chaotic (1/255 of input
noise moves the head's input features by about 25 %, and 8-bit quantization noise by more than 100 %),
which trained networks are not. With batch-norm statistics taken from real images and the BN scales
times 0.7 it is in the ordered regime: activation ranges stay alike from layer to layer, and
quantization error becomes measurable as in a trained model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from yolov9_qat.models.yolo import DetectionModel

GAIN = 0.7


@torch.no_grad()
def settle_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], gain: float = GAIN) -> nn.Module:
    """Batch-norm running statistics from ``batches`` (cumulative average), BN scales times ``gain``;
    returns the model in eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for x in batches:
        model(x)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.mul_(gain)
    return model.eval()


def untrained_model(
    cfg: str, batches: list[torch.Tensor], nc: int = 80, activation: str | None = None, seed: int = 0
) -> DetectionModel:
    """A fused, eval-mode ``cfg`` model with settled batch-norm statistics (see the module docstring)."""
    torch.manual_seed(seed)
    model = DetectionModel(cfg, nc=nc, activation=activation)
    return settle_batchnorm(model, batches).fuse().eval()
