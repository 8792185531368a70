"""The training LR bookkeeping is upstream's, epoch by epoch: the learning rates of the three parameter
groups that upstream's ``train_dual.py`` logged (``../shared/fixtures/upstream-val``), also across a resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from torch import nn

from yolov9_qat.train.optim import EpochSchedule, build_optimizer, lr_lambda

EPOCHS, BATCH, N_IMAGES = 6, 16, 1500  # the fixture's side-by-side runs


def _upstream(shared_dir: Path) -> tuple[dict, list[list[float]]]:
    run = shared_dir / "fixtures" / "upstream-val" / "upstream-run"
    hyp = yaml.safe_load((run / "hyp.sbs.yaml").read_text())
    with (run / "results-seed0.csv").open() as fh:
        rows = list(csv.DictReader(fh, skipinitialspace=True))
    return hyp, [[float(r[f"x/lr{j}"]) for j in range(3)] for r in rows]


def _schedule(hyp: dict) -> tuple[nn.Module, EpochSchedule]:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    opt = build_optimizer(model, "AdamW", hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    return model, EpochSchedule(opt, lr_lambda(EPOCHS, hyp["lrf"]), hyp, hyp["nbs"], BATCH)


def _run(schedule: EpochSchedule, start: int, stop: int, nb: int) -> list[list[float]]:
    logged = []
    for epoch in range(start, stop):
        for i in range(nb):
            schedule.warmup(i + nb * epoch, epoch)
            schedule.optimizer.step()
        logged.append(schedule.lrs())
        schedule.step()
    return logged


@pytest.mark.cpu
def test_learning_rates_per_epoch_are_upstreams(shared_dir: Path) -> None:
    hyp, upstream = _upstream(shared_dir)
    _, schedule = _schedule(hyp)
    nb = -(-N_IMAGES // BATCH)
    schedule.begin(nb)
    ours = _run(schedule, 0, EPOCHS, nb)
    assert len(upstream) == EPOCHS
    for epoch, (a, b) in enumerate(zip(ours, upstream, strict=True)):
        assert a == pytest.approx(b, rel=1e-4), f"epoch {epoch}: {a} vs upstream {b}"
    # the last epoch runs at lf(epochs - 2), one epoch behind the multiplier's own index
    assert ours[-1][1] == pytest.approx(hyp["lr0"] * lr_lambda(EPOCHS, hyp["lrf"])(EPOCHS - 2))


@pytest.mark.cpu
def test_a_resumed_run_continues_with_the_same_learning_rates(shared_dir: Path) -> None:
    hyp, _ = _upstream(shared_dir)
    nb = -(-N_IMAGES // BATCH)
    _, straight = _schedule(hyp)
    straight.begin(nb)
    reference = _run(straight, 0, EPOCHS, nb)
    _, first = _schedule(hyp)
    first.begin(nb)
    head = _run(first, 0, 3, nb)
    state = first.optimizer.state_dict()
    _, resumed = _schedule(hyp)  # a new process: schedule made, then the saved optimizer state loaded
    resumed.optimizer.load_state_dict(state)
    resumed.begin(nb, start_epoch=3)
    combined = head + _run(resumed, 3, EPOCHS, nb)
    for a, b in zip(combined, reference, strict=True):
        assert a == pytest.approx(b, rel=1e-9)
