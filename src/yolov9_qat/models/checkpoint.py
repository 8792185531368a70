"""Checkpoints: upstream YOLOv9 release pickles (read) and this package's own format (read / write).

Upstream release checkpoints are ``torch.save`` pickles of a dict whose ``model`` entry is a whole
``models.yolo.DetectionModel`` object. Loading one must not need (or run) upstream code: a restricted
unpickler maps every known upstream class onto an inert placeholder module, from which the config
(``model.yaml``), the class names and the state dict are read; the network is then rebuilt from this
package's own blocks and the weights loaded into it. An unknown upstream class is an error that names it.

This package's own format is plain data — loadable with ``torch.load(weights_only=True)``::

    {"format": "yolov9-qat", "version": 1, "cfg": {...}, "nc": int, "names": [...],
     "activation": "SiLU", "fused": bool, "state_dict": {...}, "meta": {...}, ...extra}
"""

from __future__ import annotations

import logging
import pickle
import types
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yolov9_qat.errors import CheckpointError, ConfigError, UserError
from yolov9_qat.models.activations import activation_of
from yolov9_qat.models.reparam import reparameterize
from yolov9_qat.models.yolo import DetectionModel, shipped_configs
from yolov9_qat.utils.files import atomic_save

log = logging.getLogger("yolov9_qat.models")

FORMAT = "yolov9-qat"
VERSION = 1

#: upstream classes (module -> names) an official checkpoint may hold
UPSTREAM_CLASSES: dict[str, set[str]] = {
    "models.common": {
        "Conv", "RepConvN", "RepNBottleneck", "RepNCSP", "RepNCSPELAN4", "ELAN1", "AConv", "ADown",
        "SPPELAN", "SP", "Concat", "CBLinear", "CBFuse", "DFL", "Silence", "Shortcut",
        "FReLU", "AconC", "Mish",
    },
    "models.yolo": {"DetectionModel", "Model", "DDetect", "DualDDetect"},
    "models.experimental": set(),
    "utils.activations": {"FReLU", "AconC", "Mish", "SiLU"},
}  # fmt: skip
# other globals an upstream pickle legitimately refers to
_SAFE_PREFIXES = ("torch", "collections", "numpy", "_codecs", "argparse", "pathlib", "datetime")
_SAFE_BUILTINS = {"set", "frozenset", "slice", "range", "complex", "dict", "list", "tuple", "getattr"}


class _UpstreamModule(nn.Module):
    """Inert stand-in for an upstream class: holds the pickled state, never runs."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("placeholder for an upstream module; rebuild the model instead")


_placeholders: dict[tuple[str, str], type] = {}


def _placeholder(module: str, name: str) -> type:
    key = (module, name)
    if key not in _placeholders:
        _placeholders[key] = type(name, (_UpstreamModule,), {"__module__": f"upstream.{module}"})
    return _placeholders[key]


class _UpstreamUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in UPSTREAM_CLASSES or module.startswith(("models.", "utils.")):
            if name in UPSTREAM_CLASSES.get(module, set()):
                return _placeholder(module, name)
            raise CheckpointError(
                f"checkpoint holds an unknown upstream class {module}.{name}; this package maps "
                f"{', '.join(sorted(UPSTREAM_CLASSES['models.common'] | UPSTREAM_CLASSES['models.yolo']))}"
            )
        if module.startswith(_SAFE_PREFIXES) or (
            module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS
        ):
            return super().find_class(module, name)
        raise CheckpointError(f"checkpoint refers to {module}.{name}, which is not allowed in a checkpoint")


_pickle_module = types.SimpleNamespace(
    Unpickler=_UpstreamUnpickler, load=pickle.load, __name__="upstream_pickle"
)


@dataclass
class Checkpoint:
    """A loaded model and everything its file said about it."""

    model: DetectionModel
    source: str  # "yolov9-qat" or "upstream"
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # optimizer, ema, epoch ... (own format)


def _read(path: Path) -> tuple[Any, str]:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    if not zipfile.is_zipfile(path):
        size = path.stat().st_size
        with path.open("rb") as fh:
            if fh.read(4) == b"PK\x03\x04":
                raise CheckpointError(
                    f"{path} is truncated or corrupt ({size} bytes, the archive is incomplete)"
                )
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({size} bytes, not a torch.save archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), FORMAT
    except pickle.UnpicklingError:
        pass  # a pickle with classes in it: an upstream checkpoint (tried below)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(e)})") from None
    try:
        return torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_pickle_module
        ), "upstream"
    except CheckpointError:
        raise
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _upstream_activation(obj: nn.Module) -> str | None:
    for m in obj.modules():
        if type(m).__name__ in ("Conv", "RepConvN") and "act" in m._modules:
            return activation_of(m._modules["act"]) or type(m._modules["act"]).__name__
    return None


def _load_state(model: DetectionModel, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(
                f"{len(shape)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
            )
        raise CheckpointError(
            f"weights in {path} do not fit the config {model.cfg_name!r}: {', '.join(parts)} keys"
        )
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def _from_upstream(ckpt: Any, path: Path) -> Checkpoint:
    obj = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else ckpt
    if not isinstance(obj, nn.Module) or not hasattr(obj, "yaml"):
        raise CheckpointError(f"{path} holds no upstream DetectionModel (no 'model' entry with a config)")
    cfg = dict(obj.yaml)
    names = getattr(obj, "names", None)
    names = [names[k] for k in sorted(names)] if isinstance(names, dict) else names
    act = _upstream_activation(obj)
    cfg.setdefault("cfg_name", Path(getattr(obj, "yaml_file", "") or path.stem).stem)
    fused = not any(type(m).__name__ == "BatchNorm2d" for m in obj.modules())
    model = DetectionModel(cfg, nc=int(cfg.get("nc", getattr(obj, "nc", 80))), activation=act, names=names)
    if fused:
        model.fuse()
    _load_state(model, obj.state_dict(), path)
    meta = {k: ckpt.get(k) for k in ("epoch", "best_fitness", "date", "git") if isinstance(ckpt, dict)}
    meta["origin"] = f"upstream checkpoint {path.name}"
    return Checkpoint(model=model.eval(), source="upstream", meta=meta)


def _from_own(ckpt: dict[str, Any], path: Path) -> Checkpoint:
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a plain torch file, not a yolov9-qat or upstream YOLOv9 checkpoint")
    if int(ckpt.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path} was written by a newer yolov9-qat (format version {ckpt['version']})")
    model = DetectionModel(
        ckpt["cfg"], nc=ckpt["nc"], activation=ckpt.get("activation"), names=ckpt.get("names")
    )
    if ckpt.get("fused"):
        model.fuse()
    _load_state(model, ckpt["state_dict"], path)
    known = {"format", "version", "cfg", "nc", "names", "activation", "fused", "state_dict", "meta"}
    extra = {k: v for k, v in ckpt.items() if k not in known}
    return Checkpoint(model=model.eval(), source=FORMAT, meta=dict(ckpt.get("meta") or {}), extra=extra)


def load(path: str | Path) -> Checkpoint:
    """Load an upstream YOLOv9 release checkpoint or a yolov9-qat checkpoint (fp32, eval mode, CPU)."""
    path = Path(path)
    ckpt, kind = _read(path)
    if kind == "upstream":
        return _from_upstream(ckpt, path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return _from_own(ckpt, path)


def load_model(path: str | Path) -> DetectionModel:
    return load(path).model


def to_dict(model: DetectionModel, meta: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The own-format checkpoint dict of ``model`` (weights copied to CPU, fp32)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "cfg": model.yaml,
        "nc": model.nc,
        "names": list(model.names),
        "activation": model.activation,
        "fused": model.fused,
        "state_dict": state,
        "meta": dict(meta or {}),
        **extra,
    }


def save(model: DetectionModel, path: str | Path, meta: dict[str, Any] | None = None, **extra: Any) -> Path:
    """Write ``model`` in the own format, atomically (temp file + rename)."""
    ckpt = to_dict(model, meta, **extra)
    return atomic_save(path, lambda tmp: torch.save(ckpt, tmp))


# --- the float model a checkpoint holds, ready to quantize or export ---------------------------------
def is_qat_checkpoint(ck: Checkpoint) -> bool:
    """Whether a checkpoint holds a QAT model (its quantizer state under ``extra["qat"]``)."""
    return isinstance(ck.extra.get("qat"), dict)


def gelan_cfg_for(model: DetectionModel) -> str:
    """The shipped GELAN config a dual-head YOLOv9 model reparameterizes onto: its config name with
    ``yolov9`` replaced by ``gelan`` (``yolov9-c`` -> ``gelan-c``)."""
    name = model.cfg_name
    gelan = name.replace("yolov9", "gelan")
    if gelan == name or gelan not in shipped_configs():
        raise UserError(
            f"{name!r} is a dual-head YOLOv9 model and there is no GELAN config {gelan!r} to "
            "reparameterize it onto; convert it first with "
            "`yolov9-qat reparameterize --weights W --cfg GELAN_CFG --out W-converted.pt`"
        )
    return gelan


def load_float_model(
    weights: str | Path, activation: str | None = None
) -> tuple[DetectionModel, dict[str, Any]]:
    """The fused float GELAN model of a checkpoint (reparameterized when it is a dual-head YOLOv9)."""
    ck = load(weights)
    if is_qat_checkpoint(ck):
        raise UserError(
            f"{weights} is already a QAT checkpoint; quantize its float model, or evaluate it with `yolov9-qat eval`"
        )
    model = ck.model
    info: dict[str, Any] = {"source": ck.source, "cfg": model.cfg_name, "reparameterized_from": None}
    if activation is not None:
        from yolov9_qat.models.activations import canonical_activation

        if canonical_activation(activation) != model.activation:
            raise UserError(
                f"{weights} was built with activation {model.activation}, not {canonical_activation(activation)}"
            )
    if model.is_dual:
        gelan = gelan_cfg_for(model)
        log.info(
            "%s is a dual-head YOLOv9 model (%s): reparameterizing it onto %s (the GELAN config named "
            "after it); give a converted checkpoint (`yolov9-qat reparameterize`) to choose another",
            Path(weights).name,
            model.cfg_name,
            gelan,
        )
        try:
            model = reparameterize(model, gelan)
        except ConfigError as e:
            raise UserError(
                f"cannot reparameterize {model.cfg_name!r} onto {gelan!r} ({e}); convert it with "
                "`yolov9-qat reparameterize --weights W --cfg GELAN_CFG --out W-converted.pt`"
            ) from None
        info.update(reparameterized_from=info["cfg"], cfg=gelan)
    info["activation"] = model.activation
    return model.fuse().eval(), info
