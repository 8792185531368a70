"""Build a detector from an upstream-style model YAML (``[from, repeats, module, args]`` rows)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yolov9_qat import cfg
from yolov9_qat.errors import ConfigError
from yolov9_qat.models import blocks
from yolov9_qat.models.activations import canonical_activation, use_activation
from yolov9_qat.models.heads import DDetect, DualDDetect

#: module names a model YAML may use -> class
MODULES: dict[str, type[nn.Module]] = {
    "Conv": blocks.Conv,
    "AConv": blocks.AConv,
    "ADown": blocks.ADown,
    "ELAN1": blocks.ELAN1,
    "RepNCSPELAN4": blocks.RepNCSPELAN4,
    "SPPELAN": blocks.SPPELAN,
    "CBLinear": blocks.CBLinear,
    "CBFuse": blocks.CBFuse,
    "Concat": blocks.Concat,
    "Silence": blocks.Silence,
    "RepConvN": blocks.RepConvN,
    "RepNCSP": blocks.RepNCSP,
    "RepNBottleneck": blocks.RepNBottleneck,
    "SP": blocks.SP,
    "nn.Upsample": nn.Upsample,
    "DDetect": DDetect,
    "DualDDetect": DualDDetect,
}
# modules whose first argument is the output width (scaled by width_multiple, rounded to 8)
_WIDTH_FIRST = {"Conv", "AConv", "ADown", "ELAN1", "RepNCSPELAN4", "SPPELAN", "CBLinear", "RepConvN"}
_HEADS = {"DDetect", "DualDDetect"}


def shipped_configs() -> list[str]:
    """Names of the model configs shipped with the package (``gelan-c``, ``yolov9-t`` ...)."""
    return cfg.shipped("models")


def load_model_cfg(model_cfg: str | Path | dict) -> dict[str, Any]:
    """A model config as a dict, from a dict, a YAML path, or a shipped config's name."""
    if isinstance(model_cfg, dict):
        return copy.deepcopy(model_cfg)
    path = cfg.resolve("models", model_cfg)
    d = cfg.load_yaml("models", path)
    if "backbone" not in d or "head" not in d:
        raise ConfigError(f"model config {path} has no 'backbone' and 'head' sections")
    d.setdefault("cfg_name", path.name.removesuffix(".yaml"))
    return d


def _eval_arg(a: Any, nc: int) -> Any:
    if a == "nc":
        return nc
    if a == "None":
        return None
    return a


def parse_model(d: dict[str, Any], ch: int = 3) -> tuple[nn.Sequential, list[int]]:
    """Build the layer list from a model dict; returns ``(layers, save)`` like upstream.

    Each layer gets ``i`` (index), ``f`` (from), ``type`` (module name) and ``np`` (parameters).
    """
    nc, gd, gw = d["nc"], d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0)
    chs = [ch]
    layers, save = [], []
    for i, row in enumerate(d["backbone"] + d["head"]):
        try:
            f, n, name, args = row
        except (TypeError, ValueError):
            raise ConfigError(f"layer {i}: expected [from, repeats, module, args], got {row!r}") from None
        if name not in MODULES:
            raise ConfigError(f"layer {i}: unknown module {name!r}; known: {', '.join(sorted(MODULES))}")
        m = MODULES[name]
        args = [_eval_arg(a, nc) for a in args]
        n = max(round(n * gd), 1) if n > 1 else n
        if name in _WIDTH_FIRST:
            c1, c2 = chs[f], args[0]
            if isinstance(c2, list):
                c2 = [blocks.make_divisible(c * gw, 8) for c in c2]
            else:
                c2 = blocks.make_divisible(c2 * gw, 8)
            args = [c1, c2, *args[1:]]
        elif name == "Concat":
            c2 = sum(chs[x] for x in f)
        elif name == "CBFuse":
            c2 = chs[f[-1]]
        elif name in _HEADS:
            args = [args[0], [chs[x] for x in f]]
            c2 = None
        else:
            c2 = chs[f]
        module = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        module.i, module.f, module.type = i, f, name
        module.np = sum(p.numel() for p in module.parameters())
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(module)
        if i == 0:
            chs = []
        chs.append(c2)  # CBLinear keeps its list of widths
    return nn.Sequential(*layers), sorted(set(save))


class DetectionModel(nn.Module):
    """A YOLOv9 / GELAN detector built from a model config.

    ``model(x)`` returns the head's output (see :mod:`yolov9_qat.models.heads`). Attributes: ``yaml``
    (the config dict, kept in checkpoints), ``names``, ``nc``, ``activation``, ``stride``, ``head``.
    """

    def __init__(
        self,
        cfg: str | Path | dict = "gelan-c",
        nc: int | None = None,
        activation: str | None = None,
        ch: int = 3,
        names: list[str] | None = None,
    ) -> None:
        super().__init__()
        d = load_model_cfg(cfg)
        if nc is not None and nc != d.get("nc"):
            d["nc"] = int(nc)
        act = canonical_activation(activation or d.get("activation"))
        d["activation"] = act
        d["ch"] = ch
        self.yaml = d
        self.activation = act
        with use_activation(act):
            self.model, self.save = parse_model(copy.deepcopy(d), ch=ch)
        self.nc = int(d["nc"])
        self.names = list(names) if names is not None else [str(i) for i in range(self.nc)]
        self.fused = False
        head = self.head
        head.stride.copy_(self._infer_strides(ch))
        head.bias_init()
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03
            elif isinstance(m, (nn.ReLU, nn.SiLU, nn.Mish)):
                m.inplace = True

    @property
    def head(self) -> DDetect:
        return self.model[-1]

    @property
    def stride(self) -> torch.Tensor:
        return self.head.stride

    @property
    def is_dual(self) -> bool:
        return bool(self.head.dual)

    @property
    def cfg_name(self) -> str:
        return str(self.yaml.get("cfg_name", "custom"))

    def _run(self, x: torch.Tensor, upto: int | None = None):
        outputs: list[Any] = []
        layers = self.model if upto is None else self.model[:upto]
        for m in layers:
            if m.f != -1:
                x = outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]
            x = m(x)
            outputs.append(x if m.i in self.save else None)
        return x, outputs

    def _infer_strides(self, ch: int, s: int = 256) -> torch.Tensor:
        """Strides of the head's inputs, from the feature-map sizes of a dummy forward (no BN update)."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            _, outputs = self._run(torch.zeros(1, ch, s, s), upto=len(self.model) - 1)
        self.train(was_training)
        head = self.head
        first = head.f[: head.nl]
        return torch.tensor([s / outputs[j].shape[-2] for j in first], dtype=torch.float32)

    def forward(self, x: torch.Tensor):
        return self._run(x)[0]

    def fuse(self) -> DetectionModel:
        """Fold Conv+BN and RepConvN's branches for inference (in place)."""
        for m in self.modules():
            if isinstance(m, (blocks.Conv, blocks.RepConvN)):
                m.fuse()
        self.fused = True
        return self

    def info(self) -> dict[str, Any]:
        return {
            "cfg": self.cfg_name,
            "layers": len(self.model),
            "params": sum(p.numel() for p in self.parameters()),
            "activation": self.activation,
            "nc": self.nc,
            "dual": self.is_dual,
            "fused": self.fused,
        }
