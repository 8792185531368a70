"""Insert Q/DQ quantizers by the rules of :mod:`yolov9_qat.quant.rules` and calibrate them (PTQ).

The model is quantized in its deployment form: Conv+BN folded, RepConvN's branches folded into one
conv (``model.fuse()``), the GELAN graph (a YOLOv9 dual-head model is reparameterized first), as the
YOLOv9-QAT tool does. ModelOpt (``nvidia-modelopt``) supplies the quantized convs / max-pools and the
``TensorQuantizer`` (fake quantization, histogram and max calibrators); the blocks' own quantizers
come from :mod:`yolov9_qat.quant.modules`. Tied sites get one ``TensorQuantizer`` object.

Calibration does not use ``mtq.quantize``'s algorithms (its default ``max`` algorithm fails on
histogram calibrators): statistics are collected with fake quantization off, then every quantizer
loads its ``amax`` from its own calibrator (:mod:`yolov9_qat.quant.calib`: ModelOpt's growing
histogram breaks on tied quantizers). Weights: per-channel max of the weight itself.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from modelopt.torch.quantization.nn import QuantModuleRegistry, TensorQuantizer
from modelopt.torch.quantization.nn.modules.quant_module import QuantModule
from torch import nn
from tqdm import tqdm

from yolov9_qat.errors import UserError
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.quant import rules
from yolov9_qat.quant.calib import DEFAULT_BINS, FixedRangeHistogram
from yolov9_qat.quant.distributed import DistContext
from yolov9_qat.quant.modules import register_twins
from yolov9_qat.quant.options import CALIB_METHODS, DEFAULT_CALIB_METHOD, DEFAULT_PERCENTILE

log = logging.getLogger("yolov9_qat.quant")


def _input_cfg() -> dict[str, Any]:
    # pass_through_bwd=False: straight-through estimator with zero gradient outside [-amax, amax]
    # (pytorch-quantization's behaviour, which the YOLOv9-QAT recipe was tuned with). The
    # calibrator is chosen by calibrate().
    return {**rules.INPUT_FORMAT, "calibrator": "max", "pass_through_bwd": False}


def _weight_cfg() -> dict[str, Any]:
    return {**rules.WEIGHT_FORMAT, "calibrator": "max", "pass_through_bwd": False}


def check_method(method: str) -> str:
    if method not in CALIB_METHODS:
        raise UserError(f"calibration method {method!r} is not one of {', '.join(CALIB_METHODS)}")
    return method


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, TensorQuantizer) for m in model.modules())


def _check_skip(model: DetectionModel, skip_layers: Iterable[int]) -> list[int]:
    n = len(model.model)
    out = []
    for i in skip_layers:
        j = int(i)
        if not -n <= j < n:
            raise UserError(f"skip layer {i} is not a layer of {model.cfg_name} (0..{n - 1})")
        out.append(j % n)
    return sorted(set(out))


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent, _, name = path.rpartition(".")
    return (model.get_submodule(parent) if parent else model), name


def prepare_qat_model(
    model: DetectionModel,
    calib_method: str = DEFAULT_CALIB_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    skip_layers: Iterable[int] = (),
    placement: str = rules.DEFAULT_PLACEMENT,
    head_float: bool = False,
) -> DetectionModel:
    """Quantize ``model`` in place (fused first) and return it; quantizers are not calibrated yet.

    ``calib_method`` (with ``percentile``) is the method :func:`calibrate` uses unless told
    otherwise. ``skip_layers``: indices into ``model.model`` that stay float. ``placement``: ``trt``
    (TensorRT's rules) or ``ort`` (every op's output quantized too, for ONNX Runtime's integer
    kernels; see :mod:`yolov9_qat.quant.rules`). ``head_float``: the head's last 1x1 convs stay float
    (:func:`yolov9_qat.quant.rules.head_output_paths`; default: INT8 in, float out). The settings are
    kept in ``model.qat`` (a plain dict), which QAT checkpoints store.
    """
    check_method(calib_method)
    rules.check_placement(placement)
    if not isinstance(model, DetectionModel):
        raise UserError(f"only DetectionModel can be quantized, got {type(model).__name__}")
    if is_quantized(model):
        raise UserError("the model is already quantized")
    rules.check_model(model)
    skip = _check_skip(model, skip_layers)
    if not model.fused:
        model.fuse()
    model.eval()
    register_twins()
    p = rules.plan(model, skip, placement, head_float)

    for path in dict.fromkeys(path for path, _ in p.sites):
        m = model.get_submodule(path)
        if isinstance(m, QuantModule):
            continue
        q = QuantModuleRegistry.convert(m)
        if q is not m:
            parent, name = _parent(model, path)
            setattr(parent, name, q)

    for path, attr in p.sites:
        m = model.get_submodule(path)
        if not hasattr(m, attr):  # the ``ort`` quantizers (rules.ORT_SITES): made here, not by twins
            m.add_module(attr, TensorQuantizer())
        q = getattr(m, attr)
        q.set_from_attribute_config(_weight_cfg() if attr == rules.WEIGHT else _input_cfg())

    groups = p.tied()
    _tie(model, groups)
    if placement == "ort":
        groups = rules.flow_ties(model)
        _tie(model, groups)

    model.qat = {
        "calib_method": calib_method,
        "percentile": float(percentile),
        "skip_layers": skip,
        "placement": placement,
        "head_float": bool(head_float),
        "calibrated": False,
    }
    n_q = len({id(q) for *_, q in rules.quantizer_sites(model)})
    log.info(
        "inserted %d quantizers at %d sites (%d tie groups)%s%s",
        n_q,
        len(p.sites),
        len(groups),
        f"; layers {skip} stay float" if skip else "",
        "; the head's output convs stay float" if head_float else "",
    )
    return model


def _tie(model: nn.Module, groups: list[list[rules.Site]]) -> None:
    """Make every site of each group use the group's first quantizer object."""
    for group in groups:
        first = getattr(model.get_submodule(group[0][0]), group[0][1])
        for path, attr in group[1:]:
            setattr(model.get_submodule(path), attr, first)


def placement_of(model: nn.Module) -> str:
    return getattr(model, "qat", {}).get("placement", rules.DEFAULT_PLACEMENT)


def plan_of(model: nn.Module) -> rules.Plan:
    """The rules' plan for a quantized model, with the settings it was quantized with."""
    qat = getattr(model, "qat", {})
    return rules.plan(
        model, qat.get("skip_layers", ()), placement_of(model), bool(qat.get("head_float", False))
    )


def unique_quantizers(model: nn.Module) -> dict[str, list[tuple[str, TensorQuantizer]]]:
    """``{"input": [(site name, q)], "weight": [(site name, q)]}``, each quantizer once (first site)."""
    seen: set[int] = set()
    out: dict[str, list[tuple[str, TensorQuantizer]]] = {"input": [], "weight": []}
    for path, attr, q in rules.quantizer_sites(model):
        if id(q) in seen:
            continue
        seen.add(id(q))
        out["weight" if attr == rules.WEIGHT else "input"].append((rules.site_name((path, attr)), q))
    return out


def _load_amax(q: TensorQuantizer, method: str, name: str, **kwargs: Any) -> None:
    try:
        if method == "max":
            q.load_calib_amax()
        else:
            q.load_calib_amax(method, **kwargs)
    except RuntimeError as e:
        raise RuntimeError(f"calibration of {name} failed: {e}") from None
    if not bool(torch.isfinite(q.amax).all()):
        raise RuntimeError(f"calibration of {name} gave a non-finite amax ({q.amax})")


def check_amax(model: nn.Module, when: str) -> int:
    """Refuse a model whose enabled quantizers do not all hold a finite, positive ``amax``.

    TensorRT rejects such a scale only at engine build time ("scale ... must all be positive"), far
    from the cause; here the error names the quantizer (site), what is wrong and ``when`` (e.g.
    "after calibration"). Returns how many quantizers were checked.
    """
    bad: list[str] = []
    checked = 0
    for kind, items in unique_quantizers(model).items():
        for name, q in items:
            if not q.is_enabled:
                continue
            checked += 1
            amax = q.amax
            if amax is None:
                bad.append(f"{name}: never calibrated (no amax)")
                continue
            a = amax.detach().float().flatten()
            problems = []
            if not bool(torch.isfinite(a).all()):
                problems.append(f"{int((~torch.isfinite(a)).sum())} non-finite")
            finite = a[torch.isfinite(a)]
            if bool((finite <= 0).any()):
                problems.append(f"{int((finite == 0).sum())} zero, {int((finite < 0).sum())} negative")
            if problems:
                where = f" of {a.numel()} channels" if kind == "weight" and a.numel() > 1 else ""
                bad.append(f"{name}: amax {', '.join(problems)}{where} (min {float(a.min()):.3g})")
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UserError(
            f"{len(bad)} quantizer(s) without a finite, positive amax {when}: {'; '.join(bad[:3])}{more} "
            "- TensorRT refuses such scales; recalibrate (more --calib-batches, another --calib-method) or "
            "keep the layer in float (--skip-layers)"
        )
    return checked


def _images(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def _as_float(imgs: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = imgs.to(device, non_blocking=True)
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def calibrate_weights(model: nn.Module) -> None:
    """Per-output-channel max of every quantized conv's weight (its weight quantizer's ``amax``)."""
    for path, attr, q in rules.quantizer_sites(model):
        if attr != rules.WEIGHT or not q.is_enabled:
            continue
        w = model.get_submodule(path).weight  # outside forward: the float weight
        q.set_from_attribute_config({"calibrator": "max"})
        q.disable_quant()
        q.enable_calib()
        q(w.detach())
        q.disable_calib()
        q.enable_quant()
        _load_amax(q, "max", rules.site_name((path, attr)))


def _collect(
    model: nn.Module,
    batches: list[torch.Tensor],
    quantizers: list[tuple[str, TensorQuantizer]],
    device: torch.device,
    progress: bool,
    desc: str,
) -> None:
    for _, q in quantizers:
        q.disable_quant()
        q.enable_calib()
    try:
        for imgs in tqdm(batches, desc=desc, disable=not progress, leave=False):
            model(_as_float(imgs, device))
    finally:
        for _, q in quantizers:
            q.disable_calib()
            q.enable_quant()


@torch.no_grad()
def calibrate(
    model: DetectionModel,
    loader: Iterable,
    n_batches: int = 25,
    method: str | None = None,
    device: str | torch.device = "cpu",
    percentile: float | None = None,
    progress: bool = False,
    num_bins: int = DEFAULT_BINS,
    ctx: DistContext | None = None,
) -> dict[str, Any]:
    """PTQ: set every quantizer's ``amax`` from ``n_batches`` of ``loader`` (``(uint8 images, ...)``
    tuples or image tensors), with fake quantization off while statistics are collected.

    ``method`` (default: the one given to :func:`prepare_qat_model`): ``max``, or a histogram
    method (``percentile`` with ``percentile``, ``mse``, ``entropy``) over ``num_bins`` bins. The
    batches are read once and kept: a max pass fixes each quantizer's range, a second pass fills its
    histogram (see :mod:`yolov9_qat.quant.calib`). Weights: per-channel max. Tied quantizers are
    one object, so each tie group ends with one ``amax`` (:func:`sync_tied_amax` re-checks it).
    ``ctx`` (``torchrun``): every rank reads the same ``loader``, calibrates on its share of the
    batches, and the ranges (MAX) and histograms (SUM) are reduced over the ranks, so every rank ends
    with one process's ``amax`` for those batches. Returns ``{"method", "batches", "images",
    "seconds"}`` (over all ranks).
    """
    ctx = ctx or DistContext()
    if not hasattr(model, "qat"):
        raise UserError("calibrate() needs a model from prepare_qat_model()")
    method = check_method(method or model.qat["calib_method"])
    percentile = float(percentile if percentile is not None else model.qat["percentile"])
    device = torch.device(device)
    t0 = time.perf_counter()
    was_training = model.training
    model.to(device).eval()

    batches = [_images(b) for b in itertools.islice(loader, n_batches)]
    if not batches:
        raise UserError("calibration got no batches (is the training set empty?)")
    if len(batches) < ctx.world:
        raise UserError(f"{len(batches)} calibration batch(es) for {ctx.world} processes: give more")
    n_batches_all, n_images = len(batches), sum(int(b.shape[0]) for b in batches)
    batches = ctx.share(batches)
    inputs = [(n, q) for n, q in unique_quantizers(model)["input"] if q.is_enabled]
    calibrate_weights(model)
    for _, q in inputs:
        if hasattr(q, "_amax"):
            delattr(q, "_amax")
        q.set_from_attribute_config({"calibrator": "max"})
    _collect(model, batches, inputs, device, progress, "calibrate (max)")
    for name, q in inputs:
        if ctx.active and q._calibrator._calib_amax is not None:
            _reduce(ctx, q._calibrator, "_calib_amax", "max", device)
        _load_amax(q, "max", name)
    if method != "max":
        for _, q in inputs:
            q._calibrator = FixedRangeHistogram(float(q.amax), q.num_bits, q.unsigned, num_bins)
        _collect(model, batches, inputs, device, progress, f"calibrate ({method})")
        for name, q in inputs:
            if ctx.active and q._calibrator._calib_hist is not None:
                _reduce(ctx, q._calibrator, "_calib_hist", "sum", device)
            _load_amax(q, method, name, **({"percentile": percentile} if method == "percentile" else {}))
    for _, q in inputs:
        q._calibrator.reset()  # frees the statistics
    sync_tied_amax(model)
    check_amax(model, "after calibration")
    model.qat.update(calib_method=method, percentile=percentile, calibrated=True)
    model.to(device)  # the new amax buffers too
    model.train(was_training)
    seconds = time.perf_counter() - t0
    log.info("calibrated %d quantizers (%s) on %d images in %.1f s", len(inputs), method, n_images, seconds)
    return {"method": method, "batches": n_batches_all, "images": n_images, "seconds": seconds}


def _reduce(ctx: DistContext, calibrator: Any, attr: str, op: str, device: torch.device) -> None:
    """Reduce a calibrator's statistic over the ranks (on ``device``: nccl reduces CUDA tensors)."""
    t = getattr(calibrator, attr)
    x = t.to(device).contiguous()
    ctx.all_reduce(x, op)
    setattr(calibrator, attr, x.to(t.device))


@torch.no_grad()
def sync_tied_amax(model: DetectionModel) -> int:
    """Give every tie group of the rules one ``amax`` (the group's max) where its sites hold
    different quantizer objects; returns how many quantizers were changed (0 when ties are objects)."""
    changed = 0
    for group in plan_of(model).tied():
        qs = {id(q): q for q in (getattr(model.get_submodule(p), a) for p, a in group)}
        if len(qs) < 2:
            continue
        amaxes = [q.amax for q in qs.values() if q.amax is not None]
        if not amaxes:
            continue
        top = torch.stack([a.detach().float().max() for a in amaxes]).max()
        for q in qs.values():
            q.amax = top.to(q.amax.device) if q.amax is not None else top
            changed += 1
    return changed


def tie_violations(model: DetectionModel) -> list[str]:
    """Tie groups of the rules whose sites do not share one quantizer object or one ``amax``."""
    bad = []
    for group in plan_of(model).tied():
        qs = [getattr(model.get_submodule(p), a) for p, a in group]
        if all(q is qs[0] for q in qs):
            continue
        amaxes = [None if q.amax is None else q.amax.detach().flatten().tolist() for q in qs]
        if any(a != amaxes[0] for a in amaxes):
            bad.append(", ".join(rules.site_name(s) for s in group))
    return bad


def set_quantization(model: nn.Module, enabled: bool) -> None:
    """Turn fake quantization on or off everywhere (a float baseline of the same model)."""
    for m in model.modules():
        if isinstance(m, TensorQuantizer):
            if enabled:
                m.enable_quant()
            else:
                m.disable_quant()


@contextlib.contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, the model runs in float (every quantizer passes its input through)."""
    set_quantization(model, False)
    try:
        yield model
    finally:
        set_quantization(model, True)
