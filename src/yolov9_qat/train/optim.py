"""Optimizer parameter groups and learning-rate schedules, as upstream YOLOv9's train.py sets them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def build_optimizer(
    model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.937, decay: float = 5e-4
) -> torch.optim.Optimizer:
    """Three groups: biases (no decay) first — warm-up gives group 0 its own LR — then weights
    (decay), then normalisation weights and activation parameters (no decay)."""
    biases, weights, no_decay = [], [], []
    norm_types = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if pname == "bias":
                biases.append(p)
            elif pname == "weight" and not isinstance(module, norm_types):
                weights.append(p)
            else:  # norm weights, AconC's p1/p2/beta
                no_decay.append(p)
    if name == "SGD":
        opt = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    elif name == "Adam":
        opt = torch.optim.Adam(biases, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        opt = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif name == "LION":
        raise ValueError("optimizer LION is not supported; use SGD, Adam or AdamW")
    else:
        raise ValueError(f"unknown optimizer {name!r}; use SGD, Adam or AdamW")
    opt.add_param_group({"params": weights, "weight_decay": decay})
    opt.add_param_group({"params": no_decay, "weight_decay": 0.0})
    return opt


def lr_lambda(epochs: int, lrf: float, kind: str = "linear") -> Callable[[int], float]:
    """Multiplier of lr0 at an epoch: ``linear`` (upstream default), ``cos``, ``flat_cos``, ``fixed``."""
    if kind == "fixed":
        return lambda x: 1.0
    if kind == "cos":
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    if kind == "flat_cos":
        half = epochs // 2

        def flat_cos(x: int) -> float:
            if x < half:
                return 1.0
            return ((1 - math.cos((x - half) * math.pi / max(epochs - half, 1))) / 2) * (lrf - 1) + 1

        return flat_cos
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf
