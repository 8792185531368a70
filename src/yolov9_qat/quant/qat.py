"""QAT fine-tuning: the fake-quantized model (student) learns to reproduce the float model's
(teacher's) layer outputs.

The recipe of levipereira/yolov9-qat (``qat.py`` / ``models/quantize.py::finetune``): Adam, a small
learning rate (1e-5) for one epoch and a tenth of it for all the others (:func:`lr_schedule`), at most
``iters`` batches per epoch, and an MSE loss between the outputs of the student's and the teacher's
``model.model[i]`` for every ``supervision_stride``-th layer ``i`` plus the last layer before the
head, all with weight 1. The head itself is not supervised there; ``det_loss_weight > 0`` adds the
detection loss (labels) as well. Quantizer ``amax`` values stay as calibrated (not learned).
Validation after every epoch; the best epoch (by AP) is kept. Under ``torchrun`` the student is
wrapped in DistributedDataParallel (see :mod:`yolov9_qat.quant.distributed`); on CUDA the forward
passes run under fp16 autocast with a GradScaler, as the seed's tool does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from yolov9_qat.eval.evaluator import Evaluator, torch_predictor
from yolov9_qat.models.heads import DFL
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.quant.distributed import DistContext
from yolov9_qat.utils.tensors import tensors

log = logging.getLogger("yolov9_qat.quant")

METRIC_KEYS = ("AP", "AP50", "precision", "recall")


def supervision_layers(n_layers: int, stride: int = 1) -> list[int]:
    """Indices of ``model.model`` whose outputs are supervised: every ``stride``-th layer before the
    head, and always the last one before it (upstream's policy)."""
    if stride < 1:
        raise ValueError(f"supervision stride must be >= 1, got {stride}")
    return sorted({*range(0, n_layers - 1, stride), n_layers - 2})


def lr_schedule(epochs: int, lr: float) -> dict[int, float]:
    """Epoch (0-based) -> learning rate: ``lr`` for exactly one epoch, ``int(0.6 * epochs)``, and
    ``0.1 * lr`` for every other one. For 10 epochs that is upstream's current ``{0: 1e-6, 6: 1e-5,
    7: 1e-6}`` with ``lr = 1e-5``; 2 epochs: ``[0.1 lr, lr]``; 1 epoch: ``[lr]``."""
    full = int(0.6 * epochs)
    return {e: lr if e == full else 0.1 * lr for e in range(epochs)}


class _Recorder:
    """Forward hooks that collect the outputs of chosen layers, in call order."""

    def __init__(self, model: DetectionModel, layers: Iterable[int]) -> None:
        self.outputs: list[torch.Tensor] = []
        self.handles = [model.model[i].register_forward_hook(self._hook) for i in layers]

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        self.outputs.append(output)

    def take(self) -> list[torch.Tensor]:
        out, self.outputs = self.outputs, []
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def feature_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the mean squared error between student and teacher outputs."""
    if len(student) != len(teacher):
        raise RuntimeError(f"supervised {len(student)} student outputs for {len(teacher)} teacher outputs")
    return torch.stack(
        [F.mse_loss(s.float(), t.float()) for s, t in zip(student, teacher, strict=True)]
    ).sum()


@torch.no_grad()
def feature_mse(
    qat_model: DetectionModel, float_model: DetectionModel, images: torch.Tensor, supervision_stride: int = 1
) -> float:
    """The fine-tuning loss of ``qat_model`` against ``float_model`` on ``images`` (float, [0, 1])."""
    layers = supervision_layers(len(qat_model.model), supervision_stride)
    rs, rt = _Recorder(qat_model, layers), _Recorder(float_model, layers)
    try:
        was = qat_model.training, float_model.training
        qat_model.eval()
        float_model.eval()
        qat_model(images)
        float_model(images)
        qat_model.train(was[0])
        float_model.train(was[1])
        return float(feature_loss(rs.take(), rt.take()))
    finally:
        rs.remove()
        rt.remove()


def _freeze_batchnorm(model: nn.Module) -> None:
    """Batch norms left after fusing (FReLU's) keep their running statistics during QAT."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@dataclass
class QATResult:
    """Per-epoch records and the best / last weights (CPU state dicts)."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None  # 1-based; None when nothing was evaluated
    best_state: dict[str, torch.Tensor] | None = None
    last_state: dict[str, torch.Tensor] | None = None

    @property
    def best(self) -> dict[str, Any] | None:
        return self.epochs[self.best_epoch - 1] if self.best_epoch else None


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def qat_finetune(
    qat_model: DetectionModel,
    float_model: DetectionModel,
    train_loader: Iterable,
    val_evaluator: Evaluator | None = None,
    epochs: int = 10,
    iters: int = 200,
    lr: float = 1e-5,
    supervision_stride: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = True,
    schedule: Mapping[int, float] | None = None,
    det_loss_weight: float = 0.0,
    hyp: Mapping[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any], DetectionModel], None] | None = None,
    ctx: DistContext | None = None,
) -> QATResult:
    """Fine-tune ``qat_model`` (calibrated) towards ``float_model`` (frozen, eval mode).

    Each epoch runs at most ``iters`` batches of ``train_loader`` (``(uint8 images, targets, ...)``),
    then evaluates with ``val_evaluator`` (when given) and calls ``on_epoch_end(epoch, record,
    model)``. ``schedule`` (epoch -> learning rate) overrides :func:`lr_schedule`. At the end the
    model holds the best epoch's weights (by AP; the last epoch's without an evaluator). ``ctx``:
    the ``torchrun`` context (DDP over the ranks; give the evaluator and the callback on rank 0
    only). On CUDA: fp16 autocast and a GradScaler.
    """
    device = torch.device(device)
    ctx = ctx or DistContext()
    amp = device.type == "cuda"
    student = qat_model.to(device)
    teacher = float_model.to(device).eval().requires_grad_(False)
    student.requires_grad_(True)
    for m in student.modules():
        if isinstance(m, DFL):  # the fixed integral weights (0..15) stay fixed
            m.requires_grad_(False)
    schedule = dict(schedule) if schedule is not None else lr_schedule(epochs, lr)
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    net: nn.Module = student
    if ctx.active:
        net = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )
    layers = supervision_layers(len(student.model), supervision_stride)
    log.info("QAT: supervising layers %s, %d epochs x %d iters", layers, epochs, iters)
    det_loss = None
    if det_loss_weight > 0:
        from yolov9_qat.train.loss import build_loss

        det_loss = build_loss(student, hyp)

    result = QATResult()
    best_ap = -math.inf
    current_lr = lr
    for epoch in range(epochs):
        current_lr = schedule.get(epoch, current_lr)
        for g in optimizer.param_groups:
            g["lr"] = current_lr
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        rs, rt = _Recorder(student, layers), _Recorder(teacher, layers)
        student.train()
        _freeze_batchnorm(student)
        t0 = time.perf_counter()
        total = 0.0
        n = 0
        bar = tqdm(
            train_loader, total=iters, desc=f"QAT {epoch + 1}/{epochs}", disable=not progress, leave=False
        )
        try:
            for i, batch in enumerate(bar):
                if i >= iters:
                    break
                imgs = batch[0] if isinstance(batch, (list, tuple)) else batch
                x = imgs.to(device, non_blocking=True).float()
                if imgs.dtype == torch.uint8:
                    x = x / 255
                with torch.autocast(device_type=device.type, enabled=amp):
                    with torch.no_grad():
                        teacher(x)
                    preds = net(x)
                    loss = feature_loss(rs.take(), rt.take())
                    if det_loss is not None:
                        dl, _ = det_loss(preds, batch[1].to(device))
                        loss = loss + det_loss_weight * dl / x.shape[0]
                    elif ctx.active:  # DDP reduces every parameter the forward used: give the head's
                        loss = loss + 0.0 * sum(t.sum() for t in tensors(preds))  # (unsupervised) zeros
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                value = float(loss.detach())
                total += value
                n += 1
                bar.set_postfix(loss=f"{value:.4g}", lr=f"{current_lr:g}")
        finally:
            rs.remove()
            rt.remove()
            bar.close()
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": current_lr,
            "iters": n,
            "loss": total / max(n, 1),
            "train_s": time.perf_counter() - t0,
        }
        if val_evaluator is not None:
            t1 = time.perf_counter()
            metrics = val_evaluator.run(
                torch_predictor(student, device), progress=progress, desc=f"QAT {epoch + 1} val"
            )
            record.update({k: float(metrics[k]) for k in METRIC_KEYS})
            record["eval_s"] = time.perf_counter() - t1
            if record["AP"] > best_ap:
                best_ap = record["AP"]
                result.best_epoch = epoch + 1
                result.best_state = _cpu_state(student)
        result.epochs.append(record)
        log.info(
            "QAT epoch %d/%d: loss %.5g lr %g%s",
            epoch + 1,
            epochs,
            record["loss"],
            current_lr,
            f" AP {record['AP']:.4f} AP50 {record['AP50']:.4f}" if "AP" in record else "",
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record, student)
    student.eval()
    result.last_state = _cpu_state(student)
    if result.best_state is None:  # nothing evaluated: the last weights are the ones to keep
        result.best_state = dict(result.last_state)
    else:
        student.load_state_dict(result.best_state)
    return result
