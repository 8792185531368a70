"""The published record on a GPU: one case per figure of ``baselines/record/rtx4050.yaml`` (the seed
record), measured through the same code as ``reproduce --profile gpu``.

Latency figures are compared with the baseline of *this* GPU: the record's own on an RTX 4050 Laptop
GPU, a recorded ``baselines/record/<gpu>.yaml`` elsewhere (``pytest -m gpu --update-baselines``), and
skipped with that hint when there is none. Accuracy and delta figures need the record's model and data
(``--weights yolov9-c-converted.pt --data coco.yaml``; ``{act}`` in ``--weights`` picks one file per
activation).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from yolov9_qat.record.baseline import baseline_for_device, load_baseline, write_device_baseline
from yolov9_qat.record.tables import deltas_from_accuracy

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
SEED = load_baseline(ROOT / "baselines" / "record" / "rtx4050.yaml")
FIGURES = SEED.figures()


@pytest.fixture(scope="session")
def gpu_record(request, record_cache):
    from yolov9_qat.record.gpu import GpuRecord

    opt = request.config.getoption
    return GpuRecord(
        record_cache, data=opt("--data"), weights=opt("--weights"), device=opt("--device") or "0"
    )


@pytest.fixture(scope="session")
def device_baseline(gpu_record):
    path = baseline_for_device(gpu_record.gpu)
    return load_baseline(path) if path else None


@pytest.mark.parametrize("figure_id", [f.id for f in FIGURES])
def test_record_figure(figure_id: str, gpu_record, device_baseline, activations) -> None:
    seed = SEED.figure(figure_id)
    section, act, *rest = seed.path
    if act not in activations:
        pytest.skip(f"{act} is not in --activations")
    if section == "latency":
        if device_baseline is None:
            pytest.skip(
                f"no latency baseline for {gpu_record.gpu}: record one with `pytest -m gpu --update-baselines`"
            )
        precision, batch, metric = rest
        measured = gpu_record.latency(act, precision)[batch][metric]
        figure = device_baseline.figure(figure_id)
    else:
        acc = gpu_record.accuracy(act)
        if not acc:
            pytest.skip("accuracy figures need the record's model and data: --weights W --data coco.yaml")
        figure = SEED.figure(figure_id)
        if device_baseline is not None and figure_id in {f.id for f in device_baseline.figures()}:
            figure = device_baseline.figure(figure_id)
        if section == "accuracy":
            row, metric = rest
            measured = acc[row][metric]
        else:
            (metric,) = rest
            measured = deltas_from_accuracy({act: acc})[act][metric]
    problem = figure.check(measured)
    assert problem is None, problem


@pytest.mark.skipif(
    "not config.getoption('--update-baselines')", reason="writes baselines: --update-baselines"
)
def test_write_gpu_baseline(gpu_record, activations) -> None:
    """Record this GPU's baseline (``baselines/record/<gpu>.yaml``) from a full run."""
    record = gpu_record.run(tuple(activations))
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_record.gpu.lower()).strip("-")
    path = write_device_baseline(
        record,
        record["device"],
        ROOT / "baselines" / "record" / f"{slug}.yaml",
        source="pytest -m gpu --update-baselines",
    )
    assert load_baseline(path).figures()
