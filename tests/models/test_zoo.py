"""The model zoo: every upstream config builds with upstream's exact parameter counts."""

from __future__ import annotations

import json

import pytest
import torch

from yolov9_qat.models.activations import ACTIVATIONS
from yolov9_qat.models.yolo import DetectionModel, shipped_configs

UPSTREAM = ["gelan-t", "gelan-s", "gelan-m", "gelan-c", "gelan-e", "yolov9-t", "yolov9-s", "yolov9-m", "yolov9-c", "yolov9-e"]  # fmt: skip


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.cpu
def test_every_upstream_config_is_shipped() -> None:
    assert set(UPSTREAM) | {"gelan-n", "yolov9-n"} <= set(shipped_configs())


@pytest.mark.cpu
@pytest.mark.parametrize("name", UPSTREAM)
def test_parameter_counts_match_upstream(name: str, shared_dir) -> None:
    ref = json.loads((shared_dir / "reference" / "model_zoo_params.json").read_text())[name]
    model = DetectionModel(name)
    assert len(model.model) == ref["layers"]
    assert n_params(model) == ref["params"]
    model.fuse()
    assert n_params(model) == ref["params_fused"]


@pytest.mark.cpu
@pytest.mark.parametrize("name", ["gelan-n", "yolov9-n"])
def test_nano_variants_are_smaller_than_tiny(name: str) -> None:
    tiny = DetectionModel(name.replace("-n", "-t"), nc=10)
    nano = DetectionModel(name, nc=10)
    assert n_params(nano) < 0.5 * n_params(tiny)
    assert nano.is_dual == name.startswith("yolov9")


@pytest.mark.cpu
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_activation_is_used_everywhere_and_fusing_keeps_outputs(activation: str) -> None:
    torch.manual_seed(0)
    model = DetectionModel("gelan-n", nc=10, activation=activation)
    acts = [m.act for m in model.modules() if hasattr(m, "act") and not isinstance(m.act, torch.nn.Identity)]
    assert acts and all(type(a).__name__ == activation for a in acts)
    # settle BN statistics on random images so fusing has something to fold
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(4, 3, 96, 96))
    model.eval()
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        before = model(x)
        model.fuse()
        after = model(x)
    left = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and ".act." not in n]
    assert not left, f"BatchNorm left after fuse: {left[:3]}"
    assert (before - after).abs().max() <= 1e-3


@pytest.mark.cpu
def test_eval_output_layout() -> None:
    model = DetectionModel("yolov9-n", nc=7).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 128, 128))
    anchors = (128 // 8) ** 2 + (128 // 16) ** 2 + (128 // 32) ** 2
    assert y.shape == (1, 4 + 7, anchors)
    assert float(y[:, 4:].min()) >= 0 and float(y[:, 4:].max()) <= 1
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    model.head.return_aux = True
    with torch.no_grad():
        main, aux = model(torch.rand(1, 3, 128, 128))
    assert main.shape == aux.shape == y.shape


@pytest.mark.cpu
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_exports_to_onnx(activation: str, tmp_path) -> None:
    import onnx

    model = DetectionModel("gelan-n", nc=4, activation=activation).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, torch.rand(1, 3, 64, 64), path, opset_version=17, dynamo=False)
    onnx.checker.check_model(onnx.load(path))
