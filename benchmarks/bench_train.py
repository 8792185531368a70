"""Training benchmark: yolov9-n on the default synthetic data set, on this machine.

Prints wall time, end-to-end images/s, AP / AP50 / P / R, and what the data pipeline costs:
training images/s (data loading included) against forward+backward+step alone on the same batches
held in memory, measured in the same run.

    python benchmarks/bench_train.py                      # defaults: the CPU record's settings
    python benchmarks/bench_train.py --epochs 3 --json-out bench.json

``--parity`` runs the side-by-side comparison with upstream's ``train_dual.py`` instead: the settings of
``../shared/fixtures/upstream-val`` (its ``hyp.sbs.yaml``, 6 epochs, AdamW, batch 16, 160 px, the
synthetic set of seed 0) for each ``--seeds``, and prints our per-epoch losses and AP beside upstream's
``results-seed<S>.csv``, then the means and wall times:

    python benchmarks/bench_train.py --parity --seeds 0,1,2 --json-out parity.json

One run's figure moves with the CPU model (upstream's seed 0 reaches AP 0.531 on the fixture's machine,
0.427 on an Intel Xeon and 0.394 on an AMD EPYC, same code and data), and seeds of one trainer differ by up
to 0.1 AP at 6 epochs.
So run upstream on the same machine and give its ``results.csv`` files (renamed
``results-seed<S>.csv``, and their wall times as ``wall_s.json``, ``{"<seed>": seconds}``) with
``--upstream-dir``; the summary prints each side's seed-to-seed spread and
the standard error of the gap, so a gap smaller than its noise is not read as a difference.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import torch

from yolov9_qat import cfg as cfgs
from yolov9_qat.bench.device import cpu_model
from yolov9_qat.data.config import load_data_yaml
from yolov9_qat.data.dataset import create_dataloader
from yolov9_qat.data.synth import generate
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.train.loss import build_loss
from yolov9_qat.train.optim import build_optimizer
from yolov9_qat.train.trainer import Trainer, TrainOptions, memory_format


def compute_only(data: dict, args: argparse.Namespace, n_batches: int = 24) -> float:
    """Images/s of forward + loss + backward + optimizer step on batches already in memory."""
    hyp = cfgs.load_hyp(args.hyp)
    loader, _ = create_dataloader(
        data["train"], imgsz=args.img, batch_size=args.batch, stride=32, hyp=hyp, augment=True, workers=0,
        shuffle=True, cache_images=True,
    )  # fmt: skip
    fmt = memory_format("cpu")  # the trainer's
    batches = []
    for imgs, targets, _, _ in loader:
        batches.append(((imgs.float() / 255).contiguous(memory_format=fmt), targets))
        if len(batches) == n_batches:
            break
    model = DetectionModel(args.cfg, nc=len(data["names"])).train().to(memory_format=fmt)
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


FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "upstream-val"


def _csv_rows(path: Path) -> list[dict[str, float]]:
    """A results.csv (upstream pads its header and values with spaces) as float rows."""
    with path.open() as fh:
        rows = list(csv.DictReader(fh, skipinitialspace=True))
    out = []
    for r in rows:
        out.append({k.strip(): float(v) for k, v in r.items() if v not in ("", None)})
    return out


def parity(args: argparse.Namespace) -> dict:
    """Our trainer on the fixture's side-by-side settings, per seed, beside upstream's logs."""
    fx = Path(args.fixture)
    run_dir = fx / "upstream-run"
    if not (run_dir / "hyp.sbs.yaml").is_file():
        raise SystemExit(f"bench_train: no upstream fixture at {fx} (--fixture)")
    up_info = json.loads((fx / "expected.json").read_text())["side_by_side_training_6_epochs"]
    up_dir = Path(args.upstream_dir) if args.upstream_dir else run_dir
    seeds = [int(s) for s in args.seeds.split(",")]
    missing = [s for s in seeds if not (up_dir / f"results-seed{s}.csv").is_file()]
    if missing:
        raise SystemExit(f"bench_train: no upstream results-seed<S>.csv in {up_dir} for seeds {missing}")
    data_yaml = args.data or str(generate(Path(args.cache_dir) / "synth", progress=True))
    keys = ("train/box_loss", "train/cls_loss", "train/dfl_loss", "metrics/mAP_0.5:0.95")
    up_train = up_info["upstream_train_dual"]
    walls_here = up_dir / "wall_s.json"  # {"<seed>": seconds} of upstream's runs on this machine, if given
    if args.upstream_dir and walls_here.is_file():
        up_walls = {int(k): float(v) for k, v in json.loads(walls_here.read_text()).items()}
        walls_from = "this machine"
    else:
        up_walls = dict(zip(up_train["seeds"], up_train["wall_s"], strict=True))
        walls_from = "the fixture's machine"
    report: dict = {
        "cpu": cpu_model(),
        "upstream_logs": str(up_dir),
        "seeds": {},
        "upstream_wall_s": up_walls,
        "upstream_wall_s_from": walls_from,
    }
    for seed in seeds:
        opt = TrainOptions(
            data=data_yaml, cfg="yolov9-n", hyp=str(run_dir / "hyp.sbs.yaml"), epochs=6, batch_size=16,
            img=160, device="cpu", workers=2, project=str(Path(args.cache_dir) / "runs"),
            name=f"parity-s{seed}", exist_ok=True, close_mosaic=0, optimizer="AdamW", seed=seed,
            noplots=True, progress=False,
        )  # fmt: skip
        s = Trainer(opt).run()
        ours = _csv_rows(Path(s["save_dir"]) / "results.csv")
        up = _csv_rows(up_dir / f"results-seed{seed}.csv")
        print(f"\nseed {seed}: upstream train_dual.py | yolov9-qat train (box, cls, dfl loss; AP@[.5:.95])")
        print("| epoch | up box | up cls | up dfl | up AP | our box | our cls | our dfl | our AP |")
        print("|---|---|---|---|---|---|---|---|---|")
        for e, (u, o) in enumerate(zip(up, ours, strict=True), 1):
            print(f"| {e} | " + " | ".join(f"{u[k]:.4f}" for k in keys) + " | "
                  + " | ".join(f"{o[k]:.4f}" for k in keys) + " |")  # fmt: skip
        report["seeds"][seed] = {
            "upstream": {k: [u[k] for u in up] for k in keys},
            "ours": {k: [o[k] for o in ours] for k in keys},
            "ours_wall_s": s["wall_s"],
        }
    ap_up = [report["seeds"][s]["upstream"]["metrics/mAP_0.5:0.95"][-1] for s in seeds]
    ap_ours = [report["seeds"][s]["ours"]["metrics/mAP_0.5:0.95"][-1] for s in seeds]
    wall = [report["seeds"][s]["ours_wall_s"] for s in seeds]
    report["summary"] = {
        "seeds": seeds,
        "upstream_AP": ap_up,
        "ours_AP": ap_ours,
        "upstream_mean_AP": statistics.mean(ap_up),
        "ours_mean_AP": statistics.mean(ap_ours),
        **_gap_noise(ap_ours, ap_up),
        "ours_median_wall_s": statistics.median(wall),
        "upstream_median_wall_s": statistics.median(
            report["upstream_wall_s"][s] for s in seeds if s in report["upstream_wall_s"]
        ),
    }
    sm = report["summary"]
    print(f"\nmean AP after 6 epochs: upstream {sm['upstream_mean_AP']:.4f}, ours {sm['ours_mean_AP']:.4f} "
          f"(ours - upstream {sm['ours_mean_AP'] - sm['upstream_mean_AP']:+.4f}); our median wall "
          f"{sm['ours_median_wall_s']:.0f} s here, upstream's {sm['upstream_median_wall_s']:.0f} s "
          f"on {walls_from}")  # fmt: skip
    if "gap_standard_error" in sm:
        print(f"seed-to-seed spread (sample std): upstream {sm['upstream_std_AP']:.4f}, ours {sm['ours_std_AP']:.4f}; "
              f"gap {sm['gap']:+.4f} = {sm['gap_in_standard_errors']:+.1f} standard errors "
              f"({sm['gap_standard_error']:.4f}); upstream's logs from {up_dir}, this CPU: {report['cpu']}")  # fmt: skip
    return report


def _gap_noise(ours: list[float], upstream: list[float]) -> dict[str, float]:
    """Each side's sample standard deviation over seeds, the gap of the means and its (Welch) standard
    error; nothing where a side has one seed (no spread) or both have none."""
    if len(ours) < 2 or len(upstream) < 2:
        return {}
    sd_o, sd_u = statistics.stdev(ours), statistics.stdev(upstream)
    se = (sd_o**2 / len(ours) + sd_u**2 / len(upstream)) ** 0.5
    gap = statistics.mean(ours) - statistics.mean(upstream)
    if se == 0:
        return {}
    return {
        "ours_std_AP": sd_o,
        "upstream_std_AP": sd_u,
        "gap": gap,
        "gap_standard_error": se,
        "gap_in_standard_errors": gap / se,
    }


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
    ap.add_argument("--parity", action="store_true", help="side by side with upstream's logs (see above)")
    ap.add_argument("--seeds", default="0,1,2", help="--parity: training seeds")
    ap.add_argument("--fixture", default=str(FIXTURE), help="--parity: the upstream-val fixture folder")
    ap.add_argument(
        "--upstream-dir", default="",
        help="--parity: upstream's results-seed<S>.csv made on this machine (default: the fixture's)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.parity:
        report = parity(args)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
        return

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
