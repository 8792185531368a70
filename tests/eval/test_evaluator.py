"""The evaluator end to end: letterbox undo, image ids from the data set's COCO json, pycocotools."""

from __future__ import annotations

import pytest
import torch

from yolov9_qat.data.config import load_data_yaml
from yolov9_qat.data.synth import generate
from yolov9_qat.eval.evaluator import Evaluator


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_eval")
    return load_data_yaml(generate(out, seed=3, n_train=8, n_val=24, imgsz=96, progress=False))


def oracle(evaluator: Evaluator, score: float = 0.9, shift: float = 0.0):
    """A 'model' that returns each image's ground truth as its prediction (optionally shifted)."""
    batches = iter(evaluator.loader)
    nc = len(evaluator.names)

    def predict(images: torch.Tensor) -> torch.Tensor:
        _, targets, _, _ = next(batches)
        b, _, h, w = images.shape
        n = max(int((targets[:, 0] == i).sum()) for i in range(b)) or 1
        pred = torch.zeros(b, 4 + nc, n)
        for i in range(b):
            t = targets[targets[:, 0] == i]
            for j, (_, c, cx, cy, bw, bh) in enumerate(t.tolist()):
                pred[i, :4, j] = torch.tensor([cx * w + shift * bw * w, cy * h, bw * w, bh * h])
                pred[i, 4 + int(c), j] = score
        return pred

    return predict


@pytest.mark.cpu
def test_ground_truth_as_prediction_scores_perfectly(data) -> None:
    ev = Evaluator.for_data(data, imgsz=128, batch_size=5, workers=0)
    result = ev.run(oracle(ev), progress=False)
    assert result["AP"] == pytest.approx(1.0, abs=1e-6)
    assert result["AP50"] == pytest.approx(1.0, abs=1e-6)
    assert result["precision"] == pytest.approx(1.0, abs=1e-3)
    assert result["recall"] == pytest.approx(1.0, abs=1e-3)
    assert result["n_images"] == 24


@pytest.mark.cpu
def test_shifted_boxes_lose_strict_ap_but_keep_ap50(data) -> None:
    ev = Evaluator.for_data(data, imgsz=96, batch_size=8, workers=0)
    result = ev.run(oracle(ev, shift=0.12), progress=False)
    assert result["AP50"] > 0.95
    assert 0.2 < result["AP"] < 0.9


@pytest.mark.cpu
def test_nothing_detected(data) -> None:
    ev = Evaluator.for_data(data, imgsz=96, batch_size=8, workers=0)
    result = ev.run(lambda x: torch.zeros(x.shape[0], 4 + len(ev.names), 10), progress=False)
    assert result["AP"] == 0.0 and result["recall"] == 0.0
