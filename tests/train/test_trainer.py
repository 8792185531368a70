"""Training as a user runs it: the CLI, the synthetic set, checkpoints that val reads, exact resume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared_helpers import run_cli
from yolov9_qat.data.synth import generate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_train")
    return generate(out, seed=1, n_train=48, n_val=16, imgsz=96, progress=False)


cli = run_cli


def train_args(data: Path, project: Path, name: str, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data), "--img", "96", "--batch-size", "8", "--workers", "0",
        "--device", "cpu", "--project", str(project), "--name", name, "--no-progress", "--noplots", *extra,
    ]  # fmt: skip


def losses(run: Path) -> list[dict[str, str]]:
    with (run / "results.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.cpu
def test_train_gelan_one_epoch_then_val_reads_the_checkpoint(tiny, tmp_path) -> None:
    proc = cli(*train_args(tiny, tmp_path, "g", "--cfg", "gelan-n", "--epochs", "1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "g"
    for f in ("weights/last.pt", "weights/best.pt", "results.csv", "results.json"):
        assert (run / f).is_file(), f
    summary = json.loads((run / "results.json").read_text())
    assert summary["finished"] and summary["epochs_run"] == 1
    val = cli("val", "--weights", str(run / "weights/best.pt"), "--data", str(tiny), "--img", "96",
              "--device", "cpu", "--project", str(tmp_path), "--name", "v", "--json-out", str(tmp_path / "m.json"))  # fmt: skip
    assert val.returncode == 0, val.stderr[-2000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"AP", "AP50", "precision", "recall"} <= set(metrics)
    assert 0.0 <= metrics["AP"] <= metrics["AP50"] <= 1.0


@pytest.mark.cpu
def test_resume_continues_exactly_where_it_stopped(tiny, tmp_path) -> None:
    common = ("--cfg", "yolov9-n", "--epochs", "2", "--close-mosaic", "1")
    full = cli(*train_args(tiny, tmp_path, "full", *common))
    assert full.returncode == 0, full.stderr[-2000:]
    part = cli(*train_args(tiny, tmp_path, "part", *common, "--stop-after", "1"))
    assert part.returncode == 0, part.stderr[-2000:]
    assert len(losses(tmp_path / "part")) == 1
    resumed = cli("train", "--resume", str(tmp_path / "part"), "--data", str(tiny), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert len(b) == 2
    for key in ("train/box_loss", "train/cls_loss", "train/dfl_loss"):
        assert float(b[1][key]) == pytest.approx(float(a[1][key]), rel=1e-5), key
    again = cli("train", "--resume", str(tmp_path / "part"), "--data", str(tiny), "--no-progress")
    assert again.returncode != 0 and "nothing to resume" in again.stderr


@pytest.mark.cpu
@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tiny, tmp_path) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
        "-m", "yolov9_qat", *train_args(tiny, tmp_path, "ddp", "--cfg", "yolov9-n", "--epochs", "1"),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = tmp_path / "ddp" / "weights" / "last.pt"
    assert weights.is_file()
    assert not (tmp_path / "ddp2").exists(), "only rank 0 may create the run folder"
    val = cli("val", "--weights", str(weights), "--data", str(tiny), "--img", "96", "--device", "cpu",
              "--project", str(tmp_path), "--name", "v")  # fmt: skip
    assert val.returncode == 0, val.stderr[-2000:]


@pytest.mark.cpu
def test_bad_data_yaml_is_one_clear_line(tmp_path) -> None:
    proc = cli(
        "train", "--data", str(tmp_path / "nope.yaml"), "--cfg", "gelan-n", "--epochs", "1", "--device", "cpu"
    )
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope.yaml" in proc.stderr
    proc = cli("train", "--data", str(tmp_path / "nope.yaml"), "--cfg", "gelan-n", "--device", "0")
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
