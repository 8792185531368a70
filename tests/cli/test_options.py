"""The ``train`` and ``quantize`` flags are generated from their options dataclasses: every field with a
flag is reachable from the shipped parser, and parsing nothing gives the dataclass's own defaults."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from yolov9_qat.cli import build_parser
from yolov9_qat.options import from_namespace
from yolov9_qat.quant.options import QuantizeOptions
from yolov9_qat.train.options import TrainOptions

pytestmark = pytest.mark.cpu


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_train_defaults_are_the_dataclass_defaults() -> None:
    args = _parse("train", "--data", "d.yaml")
    assert from_namespace(TrainOptions, args) == TrainOptions(data="d.yaml")
    assert {f.name for f in fields(TrainOptions)} <= set(vars(args))  # every field has a flag


def test_quantize_defaults_are_the_dataclass_defaults() -> None:
    args = _parse("quantize", "--weights", "w.pt", "--data", "d.yaml")
    assert from_namespace(QuantizeOptions, args) == QuantizeOptions()
    with_flags = {f.name for f in fields(QuantizeOptions) if f.metadata["cli"]}
    assert with_flags <= set(vars(args)) and "skip_layers" not in with_flags


def test_flags_set_the_fields() -> None:
    args = _parse(
        "quantize", "--weights", "w.pt", "--data", "d.yaml", "--batch", "4", "--imgsz", "320", "--no-progress",
        "--no-eval-ptq", "--head-float", "--calib-method", "mse", "--calib-batch-size", "2", "--lr", "0.001",
    )  # fmt: skip
    want = replace(
        QuantizeOptions(), batch_size=4, img=320, progress=False, eval_ptq=False, head_float=True,
        calib_method="mse", calib_batch_size=2, lr=0.001,
    )  # fmt: skip
    assert from_namespace(QuantizeOptions, args) == want
    train = from_namespace(
        TrainOptions, _parse("train", "--data", "d", "--resume", "--no-progress", "--cos-lr")
    )
    assert train.resume == "runs/train/exp" and train.progress is False and train.cos_lr is True
    with pytest.raises(SystemExit):
        _parse("quantize", "--weights", "w.pt", "--data", "d.yaml", "--calib-method", "nope")


def test_quantize_rejects_unknown_option_names(tmp_path) -> None:
    from yolov9_qat.quant.pipeline import quantize

    with pytest.raises(TypeError, match="quantize"):
        quantize(tmp_path / "w.pt", tmp_path / "d.yaml", no_such_option=1)
