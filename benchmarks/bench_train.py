"""Training benchmark: yolov9-n on the default synthetic data set, on this machine.

Prints wall time, end-to-end images/s, AP / AP50 / P / R, and what the data pipeline costs:
training images/s (data loading included) against forward+backward+step alone on the same batches
held in memory, measured in the same run.

    python benchmarks/bench_train.py                      # defaults: the CPU record's settings
    python benchmarks/bench_train.py --epochs 3 --json-out bench.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from yolov9_qat import cfg as cfgs
from yolov9_qat.data.config import load_data_yaml
from yolov9_qat.data.dataset import create_dataloader
from yolov9_qat.data.synth import generate
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.train.loss import build_loss
from yolov9_qat.train.optim import build_optimizer
from yolov9_qat.train.trainer import Trainer, TrainOptions


def compute_only(data: dict, args: argparse.Namespace, n_batches: int = 24) -> float:
    """Images/s of forward + loss + backward + optimizer step on batches already in memory."""
    hyp = cfgs.load_hyp(args.hyp)
    loader, _ = create_dataloader(
        data["train"], imgsz=args.img, batch_size=args.batch, stride=32, hyp=hyp, augment=True, workers=0,
        shuffle=True, cache_images=True,
    )  # fmt: skip
    batches = []
    for imgs, targets, _, _ in loader:
        batches.append((imgs.float() / 255, targets))
        if len(batches) == n_batches:
            break
    model = DetectionModel(args.cfg, nc=len(data["names"])).train()
    opt = build_optimizer(model, args.optimizer, hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    loss_fn = build_loss(model, hyp)
    n, t = 0, 0.0
    for k, (x, tg) in enumerate(batches):
        t0 = time.perf_counter()
        loss, _ = loss_fn(model(x), tg)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if k >= 3:  # warm-up batches not timed
            t += time.perf_counter() - t0
            n += x.shape[0]
    return n / t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="", help="data.yaml (default: the synthetic set under --cache-dir)")
    ap.add_argument("--cache-dir", default=".cache/bench")
    ap.add_argument("--cfg", default="yolov9-n")
    ap.add_argument("--hyp", default="hyp.cpu-adamw")
    ap.add_argument("--optimizer", default="AdamW", choices=["SGD", "Adam", "AdamW"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--close-mosaic", type=int, default=2)
    ap.add_argument("--img", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()

    data_yaml = args.data or str(generate(Path(args.cache_dir) / "synth", progress=True))
    data = load_data_yaml(data_yaml)
    torch.set_num_threads(torch.get_num_threads())
    ips_compute = compute_only(data, args)
    opt = TrainOptions(
        data=data_yaml, cfg=args.cfg, hyp=args.hyp, epochs=args.epochs, batch_size=args.batch, img=args.img,
        device="cpu", workers=args.workers, project=str(Path(args.cache_dir) / "runs"), name="bench",
        close_mosaic=args.close_mosaic, cache=True, noplots=True, optimizer=args.optimizer,
    )  # fmt: skip
    s = Trainer(opt).run()
    best = s["best"] or {}
    row = {
        "model": args.cfg,
        "optimizer": f"{args.optimizer} ({args.hyp})",
        "epochs": s["epochs_run"],
        "wall_s": s["wall_s"],
        "images_per_s_end_to_end": s["images_per_s"],
        "images_per_s_training": s["train_images_per_s"],
        "images_per_s_compute_only": round(ips_compute, 2),
        "data_pipeline_cost": round(1 - s["train_images_per_s"] / ips_compute, 4),
        **{k: best.get(k) for k in ("AP", "AP50", "precision", "recall")},
        "threads": torch.get_num_threads(),
    }
    print("\n| " + " | ".join(row) + " |\n|" + "---|" * len(row))
    print("| " + " | ".join(str(v) for v in row.values()) + " |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
