"""The model-zoo commands as a user runs them: real processes, one clear line on bad input."""

from __future__ import annotations

import json
import subprocess

import pytest

from shared_helpers import run_cli


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.cpu
def test_help_lists_commands() -> None:
    proc = cli("--help")
    assert proc.returncode == 0 and "reparameterize" in proc.stdout


@pytest.mark.cpu
def test_reparameterize_cli(official_dir, tmp_path) -> None:
    out = tmp_path / "yolov9-t-converted.pt"
    proc = cli(
        "reparameterize",
        "--weights",
        str(official_dir / "yolov9-t.pt"),
        "--cfg",
        "gelan-t",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    info = cli("info", "--weights", str(out), "--json-out", str(tmp_path / "info.json"))
    assert info.returncode == 0, info.stderr
    summary = json.loads((tmp_path / "info.json").read_text())
    assert summary["cfg"] == "gelan-t" and summary["params"] == 2442640 and not summary["dual"]


@pytest.mark.cpu
def test_unknown_cfg_lists_the_known_ones() -> None:
    assert_one_line_error(cli("info", "--cfg", "gelan-x"), "gelan-x", "known:", "gelan-c", "yolov9-e")


@pytest.mark.cpu
def test_upstream_style_cfg_path_resolves_to_shipped_config() -> None:
    proc = cli("info", "--cfg", "models/detect/gelan-c.yaml")
    assert proc.returncode == 0 and json.loads(proc.stdout.splitlines()[-1])["params"] == 25498752


@pytest.mark.cpu
def test_bad_checkpoint_files(tmp_path, official_dir) -> None:
    text = tmp_path / "a.pt"
    text.write_text("not a checkpoint")
    assert_one_line_error(cli("info", "--weights", str(text)), "not a PyTorch checkpoint")
    cut = tmp_path / "cut.pt"
    cut.write_bytes((official_dir / "yolov9-t.pt").read_bytes()[:300_000])
    assert_one_line_error(cli("info", "--weights", str(cut)), "truncated")
    assert_one_line_error(
        cli("reparameterize", "--weights", str(tmp_path / "no.pt"), "--cfg", "gelan-t"), "does not exist"
    )


@pytest.mark.cpu
def test_reparameterize_onto_wrong_cfg(official_dir, tmp_path) -> None:
    proc = cli("reparameterize", "--weights", str(official_dir / "yolov9-t.pt"), "--cfg", "gelan-s", "--out", str(tmp_path / "x.pt"))  # fmt: skip
    assert_one_line_error(proc, "gelan-s")
    assert not (tmp_path / "x.pt").exists()
