"""Shared work for the export tests: small calibrated models exported to ONNX with Q/DQ.

``onnx_factory(cfg, activation, kind)`` builds (once per session) a fused gelan-style model with
settled batch-norm statistics and exports it at 64 px: ``kind="qat"`` is this package's placement
(:func:`prepare_qat_model` + :func:`calibrate`), ``"qat_ort"`` the same with ``placement="ort"``
(every op's output quantized, for ONNX Runtime's integer kernels), ``"plain"`` is ModelOpt's defaults
(``mtq.quantize(model, INT8_DEFAULT_CFG)``, with this package's quantized twins unregistered, so the
graph is what a user gets without the rules), ``"float"`` no quantization at all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from export_models import IMG, build, export, single_thread, tiny_qdq_model
from torch import nn

from shared_helpers import _one_thread  # noqa: F401 (an autouse fixture)
from yolov9_qat.data.config import load_data_yaml
from yolov9_qat.data.dataset import create_dataloader
from yolov9_qat.data.synth import generate


@pytest.fixture(scope="session")
def loader(tmp_path_factory):
    root = generate(
        tmp_path_factory.mktemp("synth_export"), seed=5, n_train=8, n_val=4, imgsz=IMG, progress=False
    )
    data = load_data_yaml(root)
    out, _ = create_dataloader(data["train"], imgsz=IMG, batch_size=4, stride=32, augment=False, workers=0)
    return out


@pytest.fixture(scope="session")
def images(loader) -> torch.Tensor:
    with single_thread():
        return next(iter(loader))[0].float() / 255


@pytest.fixture(scope="session")
def onnx_factory(images, loader, tmp_path_factory) -> Callable[..., Path]:
    """``make(cfg="gelan-n", activation=None, kind="qat") -> Path`` of the exported ONNX (cached)."""
    root = tmp_path_factory.mktemp("onnx_export")
    cache: dict[tuple[str, str | None, str], Path] = {}

    def make(cfg: str = "gelan-n", activation: str | None = None, kind: str = "qat") -> Path:
        key = (cfg, activation, kind)
        if key not in cache:
            with single_thread():
                model = build(images, loader, cfg, activation, kind)
                name = f"{cfg.replace('>', '_to_')}-{activation or 'default'}-{kind}.onnx"
                cache[key] = export(model, images[:1], root / name)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def ort_placement_factory(images, loader, tmp_path_factory) -> Callable[[str], tuple[nn.Module, Path]]:
    """``make(activation) -> (model, path)``: gelan-n in the ``ort`` placement, calibrated, and its
    export at 64 px with batch 2 (cached per activation)."""
    root = tmp_path_factory.mktemp("ort_placement")
    cache: dict[str, tuple[nn.Module, Path]] = {}

    def make(activation: str) -> tuple[nn.Module, Path]:
        if activation not in cache:
            with single_thread():
                model = build(images, loader, "gelan-n", activation, "qat_ort")
                cache[activation] = (model, export(model, images[:2], root / f"{activation}.onnx"))
        return cache[activation]

    return make


@pytest.fixture(scope="session")
def qat_onnx(onnx_factory) -> Path:
    return onnx_factory("gelan-n", None, "qat")


@pytest.fixture(scope="session")
def x(images) -> torch.Tensor:
    """One image, as the exported graphs take it."""
    return images[:1]


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., onnx.ModelProto]:
    """:func:`tiny_qdq_model` (a builder)."""
    return tiny_qdq_model
