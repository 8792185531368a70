"""The training loop: one process, or many under ``torchrun`` (DDP: gloo on CPU, nccl on GPU).

Upstream YOLOv9's ``train.py`` / ``train_dual.py`` recipe: SGD with three parameter groups, warm-up of
LR and momentum, linear (or cosine) LR decay, nominal-batch gradient accumulation (64 images per
step), EMA of the weights, AMP on CUDA, ``--close-mosaic`` for the last epochs, early stopping on the
fitness 0.1 AP50 + 0.9 AP. Only rank 0 evaluates and writes. ``last.pt`` holds everything needed
to continue exactly where a run stopped (optimizer, EMA, RNG states).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from yolov9_qat import cfg as cfgs
from yolov9_qat.errors import CheckpointError, UserError
from yolov9_qat.models import checkpoint
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.train.ema import ModelEMA, unwrap
from yolov9_qat.train.loss import build_loss
from yolov9_qat.train.optim import EpochSchedule, build_optimizer, lr_lambda
from yolov9_qat.train.options import TrainOptions
from yolov9_qat.utils.files import atomic_write_json
from yolov9_qat.utils.runs import run_dir, select_device

log = logging.getLogger("yolov9_qat.train")

NBS = 64  # nominal batch size (upstream's; a hyp file may set ``nbs``)
#: memory format of the model and its input batches while training, per device type: channels-last
#: convolutions are 18 % faster on one CPU thread (yolov9-n, batch 16 at 160 px: 0.79 -> 0.65 s per
#: forward + backward; 4 % on two); other devices keep upstream's (contiguous) format
MEMORY_FORMAT = {"cpu": torch.channels_last}


def memory_format(device_type: str) -> torch.memory_format:
    """The training memory format of a device type (:data:`MEMORY_FORMAT`; contiguous elsewhere)."""
    return MEMORY_FORMAT.get(device_type, torch.contiguous_format)


def _dist_env() -> tuple[int, int, int]:
    return (
        int(os.environ.get("RANK", -1)),
        int(os.environ.get("LOCAL_RANK", -1)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def fitness(metrics: dict[str, Any]) -> float:
    """Upstream's model selection score: 0.1 AP50 + 0.9 AP."""
    return 0.1 * float(metrics["AP50"]) + 0.9 * float(metrics["AP"])


def _transfer(model: DetectionModel, state: dict[str, torch.Tensor]) -> int:
    """Load the entries of ``state`` whose names and shapes fit ``model`` (fine-tuning on new classes)."""
    own = model.state_dict()
    fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fit, strict=False)
    return len(fit)


def build_model(opt: TrainOptions, nc: int, names: list[str]) -> tuple[DetectionModel, str]:
    """The model to train: from ``--cfg`` (scratch or with matching ``--weights``), or from ``--weights``."""
    if opt.weights:
        ck = checkpoint.load(opt.weights)
        src = ck.model
        if not opt.cfg and src.nc == nc and (opt.activation in (None, src.activation)):
            src.names = list(names)
            return src, f"weights {opt.weights}"
        model = DetectionModel(
            opt.cfg or src.yaml, nc=nc, activation=opt.activation or src.activation, names=names
        )
        n = _transfer(model, src.state_dict())
        return model, f"{n}/{len(model.state_dict())} tensors transferred from {opt.weights}"
    if not opt.cfg:
        raise UserError("give --cfg (a model config) for training from scratch (--weights '')")
    return DetectionModel(opt.cfg, nc=nc, activation=opt.activation, names=names), "from scratch"


def _set_rng_state(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])


class Trainer:
    """Trains a detector; ``run()`` returns the summary (best metrics, timing) also written as JSON."""

    def __init__(self, opt: TrainOptions) -> None:
        self.opt = opt
        self.rank, self.local_rank, self.world = _dist_env()
        self.main = self.rank in (-1, 0)

    # -- set-up ----------------------------------------------------------------------------------
    def _setup_device(self) -> torch.device:
        if self.world > 1:
            if torch.cuda.is_available() and self.opt.device != "cpu":
                torch.cuda.set_device(self.local_rank)
                device = torch.device("cuda", self.local_rank)
                backend = "nccl"
            else:
                device, backend = torch.device("cpu"), "gloo"
            if not dist.is_initialized():
                dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
            return device
        return select_device(self.opt.device)

    def _resume_state(self) -> dict[str, Any] | None:
        if not self.opt.resume:
            return None
        path = Path(self.opt.resume)
        if path.is_dir():
            path = path / "weights" / "last.pt"
        if not path.is_file():
            raise UserError(f"--resume {self.opt.resume}: no last.pt there")
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if "train" not in ck:
            raise CheckpointError(f"{path} is not a training checkpoint (no optimizer state to resume from)")
        return {"path": path, **ck}

    def run(self) -> dict[str, Any]:
        from yolov9_qat.data.config import load_data_yaml
        from yolov9_qat.data.dataset import create_dataloader
        from yolov9_qat.eval.evaluator import Evaluator, torch_predictor

        resume = self._resume_state()
        if resume is not None:  # the run's own options, with the remaining budget of this call
            saved = TrainOptions(**resume["train"]["opt"])
            saved.resume, saved.stop_after, saved.progress = (
                self.opt.resume,
                self.opt.stop_after,
                self.opt.progress,
            )
            if self.opt.epochs != TrainOptions.epochs and self.opt.epochs > saved.epochs:
                saved.epochs = self.opt.epochs
            self.opt = saved
        opt = self.opt
        device = self._setup_device()
        cuda = device.type == "cuda"
        seed = opt.seed + max(self.rank, 0)
        torch.manual_seed(seed)
        np.random.seed(seed)

        data = load_data_yaml(opt.data)
        names = list(data["names"])
        nc = len(names)
        hyp = cfgs.load_hyp(opt.hyp)
        if resume is not None:
            hyp = resume["train"]["hyp"]
            save_dir = Path(resume["train"]["save_dir"])
        elif self.main:
            save_dir = run_dir(opt.project, opt.name, opt.exist_ok)
        else:
            save_dir = Path(opt.project) / opt.name
        if self.world > 1:  # every rank writes into rank 0's folder choice
            box = [str(save_dir)]
            dist.broadcast_object_list(box, src=0)
            save_dir = Path(box[0])
        wdir = save_dir / "weights"
        if self.main:
            wdir.mkdir(parents=True, exist_ok=True)

        model, origin = build_model(opt, nc, names)
        model.hyp = hyp
        if resume is not None:
            model.load_state_dict(resume["train"]["model_state"])
        fmt = memory_format(device.type)
        model.to(device, memory_format=fmt).train()
        if self.main:
            info = model.info()
            log.info(
                f"model {info['cfg']} ({info['params']:,} params, {info['activation']}, nc={nc}): {origin}"
            )

        batch = opt.batch_size // self.world
        if batch < 1:
            raise UserError(
                f"--batch-size {opt.batch_size} is smaller than the number of processes ({self.world})"
            )
        nbs = int(hyp.get("nbs", NBS))
        accumulate = max(round(nbs / opt.batch_size), 1)
        hyp = dict(hyp)
        hyp["weight_decay"] = hyp["weight_decay"] * opt.batch_size * accumulate / nbs
        optimizer = build_optimizer(model, opt.optimizer, hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
        kind = (
            "cos" if opt.cos_lr else "flat_cos" if opt.flat_cos_lr else "fixed" if opt.fixed_lr else "linear"
        )
        lf = lr_lambda(opt.epochs, hyp["lrf"], kind)
        schedule = EpochSchedule(optimizer, lf, hyp, nbs, opt.batch_size)
        ema = ModelEMA(model) if self.main else None
        start_epoch, best_fitness, best_metrics = 0, -1.0, None
        if resume is not None:
            st = resume["train"]
            optimizer.load_state_dict(st["optimizer"])
            if ema is not None:
                ema.ema.load_state_dict(resume["state_dict"])
                ema.updates = st["ema_updates"]
            start_epoch = st["epoch"] + 1
            best_fitness, best_metrics = st["best_fitness"], st.get("best_metrics")
            if start_epoch >= opt.epochs:
                raise UserError(
                    f"{resume['path']} already finished all {opt.epochs} epochs; nothing to resume"
                )
            if self.main:
                log.info(f"resuming {save_dir} from epoch {start_epoch + 1}/{opt.epochs}")

        if self.world > 1:
            if opt.sync_bn and cuda:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif opt.sync_bn and self.main:
                log.info("--sync-bn needs CUDA; plain BatchNorm on the CPU")
            model = nn.parallel.DistributedDataParallel(model, device_ids=[self.local_rank] if cuda else None)

        train_loader, dataset = create_dataloader(
            data["train"],
            imgsz=opt.img,
            batch_size=batch,
            stride=32,
            hyp=hyp,
            augment=True,
            workers=opt.workers,
            shuffle=True,
            rank=self.rank,
            seed=opt.seed,
            cache_images=opt.cache,
            min_items=opt.min_items,
            prefix="train: ",
            world_size=self.world if self.world > 1 else None,
        )
        close_at = opt.epochs - opt.close_mosaic
        if start_epoch >= close_at:
            dataset.close_mosaic()
        nb = len(train_loader)
        evaluator = None
        if self.main:  # the final epoch is always evaluated, --noval or not; rect batches as upstream's
            evaluator = Evaluator.for_data(
                data, opt.img, batch_size=batch * 2, workers=min(opt.workers, 2), cache_images=opt.cache,
                rect=True,
            )  # fmt: skip
        compute_loss = build_loss(unwrap(model), hyp)
        scaler = torch.amp.GradScaler("cuda", enabled=cuda)
        schedule.begin(nb, start_epoch)
        last_opt_step = -1
        if resume is not None:
            _set_rng_state(resume["train"].get("rng"))
            last_opt_step = resume["train"].get("last_opt_step", -1)

        results_csv = save_dir / "results.csv"
        history: list[dict[str, Any]] = []
        if resume is not None and results_csv.is_file():
            with results_csv.open() as fh:
                history = [dict(r) for r in csv.DictReader(fh)][:start_epoch]
        stop = False
        t_train = 0.0
        n_images = 0
        t_start = time.time()
        epochs_run = 0
        for epoch in range(start_epoch, opt.epochs):
            if epoch == close_at and epoch > 0 and dataset.mosaic:
                if self.main:
                    log.info(f"closing mosaic for the last {opt.close_mosaic} epochs")
                dataset.close_mosaic()
            # order and augmentations are functions of (seed, epoch): a resumed run repeats an uninterrupted one
            dataset.set_epoch(epoch)
            if hasattr(train_loader.sampler, "set_epoch"):
                train_loader.sampler.set_epoch(epoch)
            else:
                train_loader.generator.manual_seed(opt.seed * 100_003 + epoch)
            model.train()
            mloss = torch.zeros(3)
            optimizer.zero_grad()
            pbar = tqdm(
                enumerate(train_loader),
                total=nb,
                disable=not (self.main and opt.progress),
                desc=f"{epoch + 1}/{opt.epochs}",
                bar_format="{l_bar}{bar:10}{r_bar}",
            )
            t0 = time.time()
            for i, (imgs, targets, _, _) in pbar:
                ni = i + nb * epoch
                imgs = (imgs.to(device, non_blocking=True).float() / 255).contiguous(memory_format=fmt)
                warm = schedule.warmup(ni, epoch)
                if warm is not None:
                    accumulate = warm
                with torch.autocast(device_type=device.type, enabled=cuda):
                    pred = model(imgs)
                loss, items = compute_loss(pred, targets.to(device))
                if self.world > 1:
                    loss = loss * self.world
                if not torch.isfinite(loss):
                    raise UserError(
                        f"training diverged at epoch {epoch + 1} (loss {float(loss)}); lower lr0 in --hyp"
                    )
                scaler.scale(loss).backward()
                if ni - last_opt_step >= accumulate:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad()
                    if ema is not None:
                        ema.update(model)
                    last_opt_step = ni
                mloss = (mloss * i + items.cpu()) / (i + 1)
                n_images += imgs.shape[0] * self.world
                if self.main and opt.progress:
                    pbar.set_postfix(
                        box=f"{mloss[0]:.3f}", cls=f"{mloss[1]:.3f}", dfl=f"{mloss[2]:.3f}", n=len(targets)
                    )
            t_train += time.time() - t0
            lrs = schedule.lrs()
            schedule.step()
            epochs_run += 1

            final = epoch + 1 == opt.epochs
            if self.main:
                metrics = None
                if not opt.noval or final:
                    plots = save_dir if final and not opt.noplots else None
                    metrics = evaluator.run(
                        torch_predictor(ema.ema, device), progress=opt.progress, desc="val", plot_dir=plots
                    )
                    fi = fitness(metrics)
                    if fi > best_fitness:
                        best_fitness, best_metrics = fi, {**_short(metrics), "epoch": epoch + 1}
                row = {
                    "epoch": epoch + 1,
                    "train/box_loss": float(mloss[0]),
                    "train/cls_loss": float(mloss[1]),
                    "train/dfl_loss": float(mloss[2]),
                    "metrics/precision": metrics["precision"] if metrics else "",
                    "metrics/recall": metrics["recall"] if metrics else "",
                    "metrics/mAP_0.5": metrics["AP50"] if metrics else "",
                    "metrics/mAP_0.5:0.95": metrics["AP"] if metrics else "",
                    "lr/pg0": lrs[0],
                    "lr/pg1": lrs[1],
                    "lr/pg2": lrs[2],
                    "time_s": round(time.time() - t0, 2),
                }
                history.append(row)
                _write_csv(results_csv, history)
                if metrics:
                    log.info(
                        f"epoch {epoch + 1}/{opt.epochs}: AP {metrics['AP']:.4f} AP50 {metrics['AP50']:.4f} "
                        f"P {metrics['precision']:.4f} R {metrics['recall']:.4f}"
                    )
                stop = (
                    bool(metrics)
                    and best_metrics is not None
                    and epoch + 1 - best_metrics["epoch"] >= opt.patience
                )
                if stop:
                    log.info(
                        f"early stop: no improvement for {opt.patience} epochs (best: epoch {best_metrics['epoch']})"
                    )
                if not opt.nosave or final:
                    train_state = {
                        "epoch": epoch,
                        "opt": asdict(opt),
                        "hyp": hyp_orig(hyp, opt.batch_size, accumulate, nbs),
                        "save_dir": str(save_dir),
                        "optimizer": optimizer.state_dict(),
                        "model_state": {
                            k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()
                        },
                        "ema_updates": ema.updates,
                        "best_fitness": best_fitness,
                        "best_metrics": best_metrics,
                        "last_opt_step": last_opt_step,
                        "rng": {"torch": torch.get_rng_state()},
                    }
                    meta = {
                        "epoch": epoch + 1,
                        "data": str(opt.data),
                        "hyp": opt.hyp,
                        "metrics": _short(metrics),
                    }
                    checkpoint.save(ema.ema, wdir / "last.pt", meta=meta, train=train_state)
                    if metrics and best_metrics and best_metrics["epoch"] == epoch + 1:
                        checkpoint.save(ema.ema, wdir / "best.pt", meta=meta)
                    if opt.save_period > 0 and (epoch + 1) % opt.save_period == 0:
                        checkpoint.save(ema.ema, wdir / f"epoch{epoch + 1}.pt", meta=meta)
            if self.world > 1:
                box = [stop]
                dist.broadcast_object_list(box, src=0)
                stop = box[0]
            if stop or (opt.stop_after and epochs_run >= opt.stop_after and not final):
                break

        summary: dict[str, Any] = {}
        if self.main:
            wall = time.time() - t_start
            summary = {
                "save_dir": str(save_dir),
                "best": best_metrics,
                "epochs_run": epochs_run,
                "last_epoch": epoch + 1,
                "finished": epoch + 1 == opt.epochs or stop,
                "wall_s": round(wall, 2),
                "train_s": round(t_train, 2),
                "images_per_s": round(n_images / max(wall, 1e-9), 2),
                "train_images_per_s": round(n_images / max(t_train, 1e-9), 2),
                "weights": str(wdir / ("best.pt" if (wdir / "best.pt").exists() else "last.pt")),
            }
            atomic_write_json(save_dir / "results.json", summary)
            if not opt.noplots:
                plot_results(results_csv, save_dir / "results.png")
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        return summary


def hyp_orig(hyp: dict[str, Any], batch_size: int, accumulate: int, nbs: int) -> dict[str, Any]:
    """The hyper-parameters as given (weight decay before its batch-size scaling)."""
    h = dict(hyp)
    h["weight_decay"] = hyp["weight_decay"] * nbs / (batch_size * accumulate)
    return h


def _short(metrics: dict[str, Any] | None) -> dict[str, float] | None:
    if not metrics:
        return None
    return {k: round(float(metrics[k]), 6) for k in ("AP", "AP50", "precision", "recall")}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from yolov9_qat.utils.files import atomic_path

    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot_results(csv_path: Path, out: Path) -> Path | None:
    """Loss and metric curves per epoch from ``results.csv``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from yolov9_qat.utils.files import atomic_save

    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    keys = [k for k in rows[0] if k.startswith(("train/", "metrics/"))]
    fig = Figure(figsize=(4 * math.ceil(len(keys) / 2), 6), tight_layout=True)
    FigureCanvasAgg(fig)
    for n, k in enumerate(keys):
        ax = fig.add_subplot(2, math.ceil(len(keys) / 2), n + 1)
        pts = [(int(r["epoch"]), float(r[k])) for r in rows if r[k] not in ("", None)]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=".")
        ax.set_title(k)
    return atomic_save(out, lambda tmp: fig.savefig(tmp, dpi=100))
