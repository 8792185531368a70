"""The record's ``qat.py quantize`` / ``eval`` / ``sensitive``, as functions the CLI calls.

``quantize``: load a checkpoint (a dual-head YOLOv9 one is reparameterized onto its GELAN config
first), fuse it, evaluate it (Origin), insert quantizers and calibrate (PTQ, evaluated), fine-tune
(QAT, evaluated every epoch) and write ``<project>/<name>/weights/qat_best_<stem>.pt``,
``qat_last_<stem>.pt``, ``ptq_<stem>.pt`` and ``<project>/<name>/summary.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yolov9_qat import cfg as cfgs
from yolov9_qat.data.config import load_data_yaml
from yolov9_qat.data.dataset import create_dataloader
from yolov9_qat.errors import UserError
from yolov9_qat.eval.evaluator import Evaluator, torch_predictor
from yolov9_qat.models import checkpoint
from yolov9_qat.models.checkpoint import load_float_model
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.quant import distributed
from yolov9_qat.quant.io import load_qat, save_qat
from yolov9_qat.quant.options import QuantizeOptions
from yolov9_qat.quant.qat import METRIC_KEYS, qat_finetune
from yolov9_qat.quant.quantize import (
    DEFAULT_CALIB_METHOD,
    DEFAULT_PERCENTILE,
    calibrate,
    check_amax,
    prepare_qat_model,
)
from yolov9_qat.quant.sensitivity import format_table, sensitivity
from yolov9_qat.utils.files import atomic_write_json, atomic_write_text
from yolov9_qat.utils.runs import run_dir, select_device

log = logging.getLogger("yolov9_qat.quant")


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _hyp(hyp: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    if isinstance(hyp, Mapping):
        return {**cfgs.load_hyp(), **hyp}
    return cfgs.load_hyp(hyp or "hyp.scratch-high")


def _check_nc(model: DetectionModel, data: dict[str, Any], weights: str | Path) -> None:
    if model.nc != data["nc"]:
        raise UserError(f"{weights} detects {model.nc} classes, the data set has {data['nc']}")


def _short(metrics: Mapping[str, Any], seconds: float) -> dict[str, float]:
    return {**{k: float(metrics[k]) for k in METRIC_KEYS}, "time_s": seconds}


def _evaluate(evaluator: Evaluator, model: torch.nn.Module, device: torch.device, progress: bool, desc: str):
    t0 = time.perf_counter()
    result = evaluator.run(torch_predictor(model, device), progress=progress, desc=desc)
    return _short(result, time.perf_counter() - t0)


def _train_loader(
    data: dict[str, Any],
    img: int,
    batch_size: int,
    hyp: dict[str, Any],
    workers: int,
    seed: int,
    ctx: distributed.DistContext | None = None,
) -> Any:
    """The QAT training loader; with an active ``ctx``, this rank's DistributedSampler share."""
    ctx = ctx or distributed.DistContext()
    loader, _ = create_dataloader(
        data["train"],
        imgsz=img,
        batch_size=batch_size,
        stride=32,
        hyp=hyp,
        augment=True,
        workers=workers,
        shuffle=True,
        seed=seed,
        prefix="train: ",
        rank=ctx.rank if ctx.active else -1,
        world_size=ctx.world if ctx.active else None,
    )
    return loader


def _loaders(
    data: dict[str, Any], img: int, batch_size: int, hyp: dict[str, Any], workers: int, seed: int
) -> tuple[Any, Evaluator]:
    """The QAT training loader (the hyp's augmentation) and the val evaluator."""
    train_loader = _train_loader(data, img, batch_size, hyp, workers, seed)
    evaluator = Evaluator.for_data(data, img, batch_size=batch_size, workers=workers)
    return train_loader, evaluator


def quantize(
    weights: str | Path,
    data: str | Path,
    options: QuantizeOptions | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Origin -> PTQ -> QAT for one checkpoint; returns the summary also written to ``summary.json``.

    The settings are ``options`` (default :class:`~yolov9_qat.quant.options.QuantizeOptions`, upstream
    YOLOv9-QAT's) with ``overrides`` (field names) replaced. ``activation``, when given,
    must be the checkpoint's (a guard for scripts that run one activation after another).
    ``placement``: ``trt`` (TensorRT's Q/DQ rules) or ``ort`` (also every op's output, for ONNX
    Runtime's integer kernels on the CPU; see :mod:`yolov9_qat.quant.rules`). ``calib_batch_size``:
    images per calibration batch (default ``batch_size``; ``calib_batches`` of them are read).
    ``head_float``: the head's last 1x1 convs stay float (as upstream's tools do; default INT8 in,
    float out).

    Under ``torchrun`` (one process per device, :mod:`yolov9_qat.quant.distributed`): ``batch_size``
    is the total over the processes; every rank calibrates on its share of the single-process
    calibration batches (reduced: every rank holds the same quantizers) and fine-tunes under DDP;
    rank 0 evaluates, selects and writes.

    The best QAT epoch is chosen by AP on the selection split (``summary["selection"]``, never the
    val images); the val figures of ``best`` are computed once, on the chosen weights.
    ``float_control``: also fine-tune the float model with exactly the QAT run's schedule (same data
    order, iterations, learning rates, loss terms and selection rule), quantizers off, as
    ``summary["origin_ft"]``: ``best - origin_ft`` is the cost of quantization alone. With the feature
    MSE alone (``det_loss_weight == 0``) the float model's loss against itself is zero, so the control
    is Origin itself and is not run.
    """
    try:
        o = dataclasses.replace(options or QuantizeOptions(), **overrides)
    except TypeError as e:  # an unknown option name
        raise TypeError(f"quantize(): {e}") from None
    t_start = time.perf_counter()
    _seed(o.seed)
    ctx = distributed.from_env()
    if o.batch_size < ctx.world:
        raise UserError(f"--batch-size {o.batch_size} is smaller than the number of processes ({ctx.world})")
    dev = distributed.setup(ctx, o.device) or select_device(o.device)
    main = ctx.main
    if not main:  # rank 0 speaks for the run
        logging.getLogger("yolov9_qat").setLevel(logging.WARNING)
    data_d = load_data_yaml(data)
    hyp_d = _hyp(o.hyp)
    float_model, info = load_float_model(weights, o.activation)
    _check_nc(float_model, data_d, weights)
    train_loader = _train_loader(data_d, o.img, o.batch_size // ctx.world, hyp_d, o.workers, o.seed, ctx)
    evaluator = (
        Evaluator.for_data(data_d, o.img, batch_size=o.batch_size, workers=o.workers) if main else None
    )
    selector = (
        Evaluator.for_selection(data_d, o.img, batch_size=o.batch_size, workers=o.workers) if main else None
    )
    save_dir = Path(ctx.broadcast(str(run_dir(o.project, o.name, o.exist_ok)) if main else None))
    wdir = save_dir / "weights"
    if main:
        wdir.mkdir(parents=True, exist_ok=True)
    stem = Path(weights).stem
    paths = {k: wdir / f"{k}_{stem}.pt" for k in ("ptq", "qat_best", "qat_last")}
    summary: dict[str, Any] = {
        "weights": str(weights),
        **info,
        "data": str(data_d.get("yaml_file", data)),
        "img": o.img,
        "batch_size": o.batch_size,
        "device": str(dev),
        "processes": ctx.world,
        "rank": max(ctx.rank, 0),
        "placement": o.placement,
        "head_float": o.head_float,
        "calib_method": o.calib_method,
        "percentile": o.percentile,
        "calib_batches": o.calib_batches,
        "calib_batch_size": o.calib_batch_size or o.batch_size,
        "skip_layers": sorted(int(i) for i in o.skip_layers),
        "iters": o.iters,
        "epochs_requested": o.epochs,
        "lr": o.lr,
        "supervision_stride": o.supervision_stride,
        "det_loss_weight": o.det_loss_weight,
        "seed": o.seed,
        "save_dir": str(save_dir),
        "selection": selector.split if selector else None,
        "reported": "val",
        "origin": None,
        "ptq": None,
        "epochs": [],
        "best": None,
        "origin_ft": None,
        "weights_out": {k: str(v) for k, v in paths.items()},
    }
    summary_path = save_dir / "summary.json"

    def write_summary() -> None:
        if main:
            summary["total_s"] = time.perf_counter() - t_start
            atomic_write_json(summary_path, summary)

    float_model.to(dev)
    if o.eval_origin and main:
        summary["origin"] = _evaluate(evaluator, float_model, dev, o.progress, "Origin")
        log.info("Origin: %s", _fmt(summary["origin"]))

    qat_model = prepare_qat_model(
        copy.deepcopy(float_model), o.calib_method, o.percentile, o.skip_layers, o.placement, o.head_float
    )
    calib_loader = train_loader
    if ctx.active or (o.calib_batch_size and o.calib_batch_size != o.batch_size):
        # every rank reads the batches one process reads; calibrate() takes this rank's share
        calib_loader = _train_loader(
            data_d, o.img, o.calib_batch_size or o.batch_size, hyp_d, o.workers, o.seed
        )
    summary["calibration"] = calibrate(
        qat_model, calib_loader, o.calib_batches, device=dev, progress=o.progress and main, ctx=ctx
    )
    meta = {"origin_weights": str(weights), "data": summary["data"], "img": o.img}
    if o.eval_ptq and main:
        summary["ptq"] = _evaluate(evaluator, qat_model, dev, o.progress, "PTQ")
        log.info("PTQ: %s", _fmt(summary["ptq"]))
    if main:
        save_qat(qat_model, paths["ptq"], meta={**meta, "stage": "ptq", "metrics": summary["ptq"]})
    write_summary()

    def on_epoch_end(epoch: int, record: dict[str, Any], model: DetectionModel) -> None:
        summary["epochs"].append({**record, "split": selector.split})
        m = {k: record[k] for k in METRIC_KEYS}
        save_qat(model, paths["qat_last"], meta={**meta, "stage": "qat", "epoch": epoch, "select": m})
        write_summary()

    def finetune(student: DetectionModel, on_end=None):
        # the same batches in the same order for every run of this call (QAT and its float control)
        train_loader.generator.manual_seed(o.seed)
        return qat_finetune(
            student, float_model, train_loader, selector, epochs=o.epochs, iters=o.iters, lr=o.lr,
            supervision_stride=o.supervision_stride, det_loss_weight=o.det_loss_weight, hyp=hyp_d,
            device=dev, progress=o.progress and main, on_epoch_end=on_end if main else None, ctx=ctx,
        )  # fmt: skip

    if o.epochs > 0:
        result = finetune(qat_model, on_epoch_end)  # leaves the model at its best epoch (selection split)
        check_amax(qat_model, "after QAT")
        if main:
            best = _evaluate(evaluator, qat_model, dev, o.progress, "QAT best")
            summary["best"] = {"epoch": result.best_epoch, **best, "select": _short_select(result.best)}
            save_qat(
                qat_model, paths["qat_best"],
                meta={**meta, "stage": "qat", "epoch": result.best_epoch, "metrics": best},
            )  # fmt: skip
            log.info("QAT (epoch %s, chosen on %s): %s", result.best_epoch, selector.split, _fmt(best))
    elif main:  # no fine-tuning: the PTQ model is both
        for key in ("qat_best", "qat_last"):
            save_qat(qat_model, paths[key], meta={**meta, "stage": "ptq", "metrics": summary["ptq"]})
    write_summary()
    if o.float_control:
        out = wdir / f"origin_ft_{stem}.pt"
        summary["origin_ft"] = _float_control(
            summary, float_model, finetune, evaluator if main else None, dev, o.progress, out
        )
        if out.is_file():
            summary["weights_out"]["origin_ft"] = str(out)
        write_summary()
    if main:
        log.info(
            "QAT weights: %s (best), %s (last); summary %s",
            paths["qat_best"],
            paths["qat_last"],
            summary_path,
        )
    ctx.close()
    return summary


def _short_select(record: Mapping[str, Any] | None) -> dict[str, float] | None:
    return {k: float(record[k]) for k in METRIC_KEYS} if record else None


def _float_control(
    summary: dict[str, Any],
    float_model: DetectionModel,
    finetune: Callable[[DetectionModel], Any],
    evaluator: Evaluator | None,
    device: torch.device,
    progress: bool,
    out: Path,
) -> dict[str, Any] | None:
    """Origin (fine-tuned): the float model through the QAT run's own ``finetune``, quantizers off;
    its chosen weights are written to ``out`` (a float checkpoint). ``evaluator`` ``None``: a
    ``torchrun`` rank other than 0 (it trains, rank 0 evaluates and writes)."""
    if summary["epochs_requested"] <= 0:
        return summary["origin"]
    if summary["det_loss_weight"] <= 0:  # feature MSE of a float model against itself: zero, no step
        if summary["origin"] is None:
            return None
        return {**summary["origin"], "epoch": 0, "note": "feature MSE alone: the control is Origin itself"}
    control = copy.deepcopy(float_model)
    result = finetune(control)
    if evaluator is None:
        return None
    metrics = _evaluate(evaluator, control, device, progress, "Origin (fine-tuned)")
    checkpoint.save(control.cpu().eval(), out, meta={"stage": "origin_ft", "epoch": result.best_epoch})
    log.info("Origin (fine-tuned, epoch %s): %s", result.best_epoch, _fmt(metrics))
    return {"epoch": result.best_epoch, **metrics, "select": _short_select(result.best)}


def _fmt(m: Mapping[str, Any]) -> str:
    return " ".join(f"{k} {m[k]:.4f}" for k in METRIC_KEYS)


def evaluate_qat(
    weights: str | Path,
    data: str | Path,
    img: int = 640,
    batch_size: int = 10,
    device: str = "",
    workers: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """The record's ``qat.py eval``: metrics of a QAT checkpoint run in PyTorch with fake INT8."""
    dev = select_device(device)
    data_d = load_data_yaml(data)
    model, _ = load_qat(weights)
    _check_nc(model, data_d, weights)
    evaluator = Evaluator.for_data(data_d, img, batch_size=batch_size, workers=workers)
    t0 = time.perf_counter()
    result = evaluator.run(torch_predictor(model, dev), progress=progress, desc="QAT eval")
    result["time_s"] = time.perf_counter() - t0
    result["weights"] = str(weights)
    log.info("QAT eval: %s", _fmt(result))
    return result


def sensitive(
    weights: str | Path,
    data: str | Path,
    hyp: str | Path | Mapping[str, Any] | None = None,
    img: int = 640,
    batch_size: int = 10,
    device: str = "",
    calib_method: str = DEFAULT_CALIB_METHOD,
    calib_batches: int = 25,
    percentile: float = DEFAULT_PERCENTILE,
    layers: Iterable[int] | None = None,
    seed: int = 57,
    project: str | Path = "runs/qat_sensitive",
    name: str = "exp",
    exist_ok: bool = False,
    workers: int = 8,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """The record's ``qat.py sensitive``: calibrate (PTQ), then the AP with each layer in float.

    Writes ``sensitivity.json`` and ``sensitivity.txt`` in the run folder.
    """
    _seed(seed)
    dev = select_device(device)
    data_d = load_data_yaml(data)
    float_model, _ = load_float_model(weights)
    _check_nc(float_model, data_d, weights)
    train_loader, evaluator = _loaders(data_d, img, batch_size, _hyp(hyp), workers, seed)
    save_dir = run_dir(project, name, exist_ok)
    model = prepare_qat_model(float_model, calib_method, percentile)
    calibrate(model, train_loader, calib_batches, device=dev, progress=progress)
    rows = sensitivity(model, evaluator, layers, device=dev, progress=progress)
    atomic_write_json(save_dir / "sensitivity.json", rows)
    table = format_table(rows)
    atomic_write_text(save_dir / "sensitivity.txt", table + "\n")
    log.info("sensitivity (top 10):\n%s", format_table(rows, top=10))
    return rows
