"""QAT checkpoints in this package's own format (plain data, ``torch.load(weights_only=True)``).

A QAT checkpoint is an ordinary yolov9-qat checkpoint of the fused float model (so
:func:`yolov9_qat.models.checkpoint.load` reads it as a float model) with one more entry, ``qat``::

    {"version": 1, "calib_method": "percentile", "percentile": 99.999, "skip_layers": [...],
     "placement": "trt" | "ort", "head_float": False, "calibrated": True,
     "quantizers": {site name: {"amax": tensor | None, "enabled": bool, "num_bits": 8,
                                "axis": None | 0, "unsigned": False, "narrow_range": False}},
     "groups": [[site name, ...], ...]}     # tie groups (sites sharing one quantizer)

``quantizers`` holds each quantizer once, under the name of its first site. Loading rebuilds the
float model, re-applies :func:`~yolov9_qat.quant.quantize.prepare_qat_model` with the stored
settings (the rules re-create the same ties, which are checked against ``groups``) and sets the
stored ``amax`` values, so the fake-quantized outputs are identical. ModelOpt's own
``mto.save/restore`` is not used: it rejects tied quantizers ("Extra keys in quantizer state_dict").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from yolov9_qat.errors import CheckpointError
from yolov9_qat.models import checkpoint
from yolov9_qat.models.checkpoint import is_qat_checkpoint
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.quant import rules
from yolov9_qat.utils.files import atomic_save

QAT_VERSION = 1


def _is_quantizer_key(key: str) -> bool:
    return any(part.endswith("_quantizer") for part in key.split(".")[:-1])


def float_state_dict(model: DetectionModel) -> dict[str, torch.Tensor]:
    """The model's weights without quantizer buffers (CPU copies)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not _is_quantizer_key(k)}


def qat_state(model: DetectionModel) -> dict[str, Any]:
    """The ``qat`` entry of a checkpoint: settings, quantizer states and tie groups."""
    if not hasattr(model, "qat"):
        raise ValueError("not a model from prepare_qat_model()")
    first: dict[int, str] = {}
    groups: dict[int, list[str]] = {}
    quantizers: dict[str, dict[str, Any]] = {}
    for path, attr, q in rules.quantizer_sites(model):
        name = rules.site_name((path, attr))
        groups.setdefault(id(q), []).append(name)
        if id(q) in first:
            continue
        first[id(q)] = name
        amax = q.amax
        axis = q.axis
        quantizers[name] = {
            "amax": None if amax is None else amax.detach().cpu().float().clone(),
            "enabled": bool(q.is_enabled),
            "num_bits": int(q.num_bits),
            "axis": list(axis) if isinstance(axis, tuple) else axis,
            "unsigned": bool(q.unsigned),
            "narrow_range": bool(q.narrow_range),
        }
    return {
        "version": QAT_VERSION,
        "calib_method": model.qat["calib_method"],
        "percentile": float(model.qat["percentile"]),
        "skip_layers": [int(i) for i in model.qat["skip_layers"]],
        "placement": model.qat.get("placement", rules.DEFAULT_PLACEMENT),
        "head_float": bool(model.qat.get("head_float", False)),
        "calibrated": bool(model.qat.get("calibrated", False)),
        "quantizers": quantizers,
        "groups": [g for g in groups.values() if len(g) > 1],
    }


def save_qat(
    model: DetectionModel, path: str | Path, meta: dict[str, Any] | None = None, **extra: Any
) -> Path:
    """Write a QAT checkpoint atomically (temp file + rename)."""
    ckpt = checkpoint.to_dict(model, meta, qat=qat_state(model), **extra)
    ckpt["state_dict"] = float_state_dict(model)
    return atomic_save(path, lambda tmp: torch.save(ckpt, tmp))


def apply_qat_state(
    model: DetectionModel, state: dict[str, Any], where: str = "checkpoint"
) -> DetectionModel:
    """Quantize the fused float ``model`` as ``state`` says and load its quantizer states."""
    from yolov9_qat.quant.quantize import prepare_qat_model

    if int(state.get("version", 0)) > QAT_VERSION:
        raise CheckpointError(f"{where}: QAT state version {state['version']} is newer than this package's")
    prepare_qat_model(
        model,
        calib_method=state["calib_method"],
        percentile=state["percentile"],
        skip_layers=state.get("skip_layers", ()),
        placement=state.get("placement", rules.DEFAULT_PLACEMENT),
        head_float=bool(state.get("head_float", False)),
    )
    sites = {rules.site_name((p, a)): q for p, a, q in rules.quantizer_sites(model)}
    groups: dict[int, list[str]] = {}
    for name, q in sites.items():
        groups.setdefault(id(q), []).append(name)
    have = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    want = sorted(sorted(g) for g in state.get("groups", []))
    if have != want:
        raise CheckpointError(
            f"{where}: its quantizer ties differ from this package's rules (written by another version?)"
        )
    stored = state["quantizers"]
    missing = [n for n in stored if n not in sites]
    if missing:
        raise CheckpointError(f"{where}: quantizer {missing[0]} has no place in the rebuilt model")
    for name, s in stored.items():
        q = sites[name]
        if int(s["num_bits"]) != q.num_bits:
            raise CheckpointError(f"{where}: {name} has {s['num_bits']} bits, the rules give {q.num_bits}")
        if s["amax"] is not None:
            if hasattr(q, "_amax"):
                delattr(q, "_amax")
            q.amax = s["amax"].float()
        if s["enabled"]:
            q.enable()
        else:
            q.disable()
    model.qat["calibrated"] = bool(state.get("calibrated", True))
    return model.eval()


def load_qat(path: str | Path) -> tuple[DetectionModel, checkpoint.Checkpoint]:
    """Rebuild the fake-quantized model of a QAT checkpoint (CPU, eval mode) and return it with the
    loaded checkpoint (``meta``, ``extra``)."""
    ck = checkpoint.load(path)
    if not is_qat_checkpoint(ck):
        raise CheckpointError(f"{path} is not a QAT checkpoint (no quantizer states); quantize it first")
    model = apply_qat_state(ck.model, ck.extra["qat"], where=str(path))
    return model, ck
