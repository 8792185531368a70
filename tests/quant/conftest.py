"""Shared work for the quantization tests: a tiny synthetic set, a gelan-n with settled batch-norm
statistics (so that activations have realistic ranges), and its calibrated PTQ form."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from shared_helpers import _one_thread  # noqa: F401 (an autouse fixture)
from yolov9_qat.bench.untrained import untrained_model
from yolov9_qat.data.config import load_data_yaml
from yolov9_qat.data.dataset import create_dataloader
from yolov9_qat.data.synth import generate
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.utils.runs import torch_threads

IMG = 64


@pytest.fixture(scope="session")
def synth_yaml(tmp_path_factory) -> Path:
    return generate(
        tmp_path_factory.mktemp("synth_quant"), seed=3, n_train=16, n_val=8, imgsz=IMG, progress=False
    )


@pytest.fixture(scope="session")
def data(synth_yaml) -> dict:
    return load_data_yaml(synth_yaml)


@pytest.fixture(scope="session")
def train_loader(data):
    loader, _ = create_dataloader(data["train"], imgsz=IMG, batch_size=8, stride=32, augment=False, workers=0)
    return loader


@pytest.fixture(scope="session")
def images(train_loader) -> torch.Tensor:
    with torch_threads(1):
        return next(iter(train_loader))[0].float() / 255


NC = 10  # the synthetic set's classes


def make_float_model(
    images: torch.Tensor, cfg: str = "gelan-n", activation: str | None = None
) -> DetectionModel:
    return untrained_model(cfg, [images, images.flip(-1)], nc=NC, activation=activation)


@pytest.fixture(scope="session")
def float_factory():
    """``make(images, cfg="gelan-n", activation=None)`` -> a fused float model with settled BN."""
    return make_float_model


@pytest.fixture(scope="session")
def float_model(images) -> DetectionModel:
    with torch_threads(1):
        return make_float_model(images)


@pytest.fixture(scope="session")
def ptq_model(float_model, train_loader) -> DetectionModel:
    from yolov9_qat.quant.quantize import calibrate, prepare_qat_model

    with torch_threads(1):
        model = prepare_qat_model(copy.deepcopy(float_model), calib_method="percentile")
        calibrate(model, train_loader, n_batches=2)
    return model.eval()


@pytest.fixture(scope="session")
def ptq_model_ort(float_model, train_loader) -> DetectionModel:
    """The calibrated ``ort`` placement of :func:`float_model` (every op's output quantized too)."""
    from yolov9_qat.quant.quantize import calibrate, prepare_qat_model

    with torch_threads(1):
        model = prepare_qat_model(copy.deepcopy(float_model), calib_method="percentile", placement="ort")
        calibrate(model, train_loader, n_batches=2)
    return model.eval()
