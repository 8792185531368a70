"""The options of a training run (:class:`TrainOptions`): the ``train`` command's flags are generated
from these fields (standard library only, so building the command line does not import torch)."""

from __future__ import annotations

from dataclasses import dataclass

from yolov9_qat.options import option


@dataclass
class TrainOptions:
    """Every knob of a training run: upstream's names, and the ``train`` command's flags (generated from
    these fields, :mod:`yolov9_qat.options`)."""

    data: str = option("", "data.yaml", required=True)
    cfg: str = option("", "model config name or YAML (from scratch, or to fine-tune --weights onto)")
    weights: str = option("", "initial weights; '' trains from scratch")
    hyp: str = option("hyp.scratch-high", "hyper-parameter YAML (name or path)")
    epochs: int = option(100, "epochs", type=int)
    batch_size: int = option(
        16, "total batch size (all processes)", flags=("--batch-size", "--batch"), type=int
    )
    img: int = option(640, "training image size", flags=("--img", "--imgsz", "--img-size"), type=int)
    device: str = option("", "cpu, 0 or 0,1 (default: GPU 0 if there is one)")
    workers: int = option(8, "data-loader processes per training process", type=int)
    project: str = option("runs/train", "runs folder")
    name: str = option("exp", "run name (runs/train/<name>)")
    exist_ok: bool = option(False, "reuse runs/train/<name> instead of numbering a new one")
    optimizer: str = option("SGD", "optimizer", choices=("SGD", "Adam", "AdamW"))
    close_mosaic: int = option(15, "turn mosaic off for the last N epochs", type=int)
    patience: int = option(100, "early stop after N epochs without improvement", type=int)
    min_items: int = option(0, "skip training images with fewer labels", type=int)
    sync_bn: bool = option(False, "SyncBatchNorm in multi-GPU training")
    resume: str = option("", "resume a run (folder or last.pt)", nargs="?", const="runs/train/exp")
    seed: int = option(0, "random seed", type=int)
    activation: str | None = option(None, "SiLU, ReLU, FReLU, Mish or AconC (overrides the config)")
    cos_lr: bool = option(False, "cosine LR schedule")
    flat_cos_lr: bool = option(False, "flat, then cosine LR schedule")
    fixed_lr: bool = option(False, "constant LR")
    cache: bool = option(False, "keep decoded images in RAM")
    noval: bool = option(False, "evaluate the final epoch only")
    nosave: bool = option(False, "save the final checkpoint only")
    noplots: bool = option(False, "no plots")
    save_period: int = option(-1, "also save every N epochs", type=int)
    progress: bool = option(True, "no progress bars", negate=True)
    #: stop this process after so many epochs (the run stays resumable); for tests and time budgets
    stop_after: int = option(0, "stop this call after N epochs (resumable)", type=int)
