"""The RTX 4050 baseline is a faithful transcription of the seed record; loading, checking, finding and
writing baselines behave."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml

from yolov9_qat.errors import ConfigError
from yolov9_qat.record import (
    Baseline,
    Figure,
    Tolerance,
    baseline_for_device,
    compare,
    deltas_from_accuracy,
    find_baseline_dir,
    load_baseline,
    write_device_baseline,
)
from yolov9_qat.record.rows import select

pytestmark = pytest.mark.cpu

ROOT = Path(__file__).resolve().parents[2]
RECORD_DIR = ROOT / "baselines" / "record"
RTX4050 = RECORD_DIR / "rtx4050.yaml"
SEED = "seed/000_d6440160449dc7b2.txt"
GPU = "NVIDIA GeForce RTX 4050 Laptop GPU"
ACTIVATIONS = ["SiLU", "ReLU", "FReLU", "Mish", "AconC"]
#: the seed's evaluation rows by their printed words: the GPU record's evaluation rows
EVAL_ROWS = {r.label: r.name for r in select("gpu", accuracy=True)}
METRICS = ["AP", "AP50", "precision", "recall"]


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    return load_baseline(RTX4050)


# ---- a small parser of the seed text ----------------------------------------------------------------

# "INT8 (SiLU)\t1\t2.89 ms\t347\t347" or "\t4\t9.78 ms\t103\t412" or "\tResilience\t20.40 ms\t50\t≈ 400"
GPU_PRECISIONS = "|".join(re.escape(r.label) for r in select("gpu", latency=True))
LATENCY_ROW = re.compile(
    rf"^(?:({GPU_PRECISIONS}) \((\w+)\))?\t(\d+|Resilience)\t(\d+\.\d+) ms\t(\d+)\t(≈ )?(\d+)\s*$"
)


def parse_seed(text: str) -> tuple[list[tuple], dict, dict]:
    """(latency rows, accuracy[act][row] = 4 numbers, deltas[act] = 4 numbers) as printed in the seed.

    A latency row without a model name belongs to the last named model, across the repeated headers
    of the record's page breaks."""
    latency, model = [], None
    for line in text.splitlines():
        m = LATENCY_ROW.match(line)
        if m:
            if m.group(1):
                model = (m.group(2), m.group(1).lower())
            assert model is not None, line
            batch = m.group(3).lower() if m.group(3) == "Resilience" else m.group(3)
            latency.append((*model, batch, m.group(4), m.group(5), m.group(7), bool(m.group(6))))
    results, comparison = text.split("\nEvaluation Results\n")[1].split("\nEvaluation Comparison\n")
    accuracy: dict = {}
    deltas: dict = {}
    for section, out in ((results, accuracy), (comparison, deltas)):
        act = None
        for line in section.splitlines():
            if line.startswith("Activation "):
                act = line.split()[1]
            cells = line.split("\t")
            if cells[0] in EVAL_ROWS:
                out.setdefault(act, {})[EVAL_ROWS[cells[0]]] = cells[1:5]
            elif cells[0] == "INT8 (TensorRT) vs Origin (Pytorch)":
                out[act] = cells[1:5]
    return latency, accuracy, deltas


@pytest.fixture(scope="module")
def seed(shared_dir: Path) -> tuple[list[tuple], dict, dict]:
    return parse_seed((shared_dir / SEED).read_text(encoding="utf-8"))


# ---- the transcription ------------------------------------------------------------------------------


def test_figure_count_and_unique_ids(baseline: Baseline) -> None:
    figures = baseline.figures()
    kinds = [f.kind for f in figures]
    assert (len(figures), kinds.count("latency"), kinds.count("accuracy"), kinds.count("delta")) == (
        350,
        270,
        60,
        20,
    )
    ids = [f.id for f in figures]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", i) for i in ids)


def test_figure_ids_and_values(baseline: Baseline) -> None:
    f = baseline.figure("latency-SiLU-int8-b4-p99_ms")
    assert (f.value, f.unit, f.path, f.tolerance) == (
        9.78,
        "ms",
        ("latency", "SiLU", "int8", "4", "p99_ms"),
        Tolerance(0.15, True),
    )
    assert baseline.figure("latency-FReLU-int8-b1-p99_ms").value == 4.87  # odd next to 325 qps; as printed
    assert baseline.figure("latency-FReLU-int8-b1-qps").value == 325
    r = baseline.figure("latency-AconC-mp-resilience-ips")
    assert (r.value, r.approximate) == (368, True)
    assert not baseline.figure("latency-AconC-mp-resilience-qps").approximate
    a = baseline.figure("accuracy-SiLU-int8_tensorrt-AP")
    assert (a.value, a.tolerance, a.path) == (
        0.3177,
        Tolerance(0.003, False),
        ("accuracy", "SiLU", "int8_tensorrt", "AP"),
    )
    assert baseline.figure("accuracy-ReLU-int8_tensorrt-recall").tolerance == Tolerance(0.02, False)
    d = baseline.figure("delta-FReLU-precision")
    assert (d.value, d.tolerance) == (-0.028, Tolerance(0.005, False))
    with pytest.raises(KeyError, match="latency-SiLU-int4"):
        baseline.figure("latency-SiLU-int4-b1-p99_ms")


def test_device_block(baseline: Baseline) -> None:
    assert baseline.device == {
        "name": GPU,
        "compute_capability": "8.9",
        "sms": 20,
        "memory_mib": 6140,
        "compute_clock_ghz": 2.355,
        "memory_clock_ghz": 7.825,
    }
    assert baseline.data["source"] == Path(SEED).name
    assert baseline.comparison == ("int8_tensorrt", "origin_pytorch")


def test_every_latency_row_matches_the_seed(baseline: Baseline, seed: tuple) -> None:
    rows, _, _ = seed
    assert len(rows) == 5 * 3 * 6
    lat = baseline.data["latency"]
    for act, prec, batch, p99, qps, ips, approx in rows:
        m = lat[act][prec][batch]
        assert (m["p99_ms"], m["qps"], m["ips"]) == (float(p99), int(qps), int(ips)), (act, prec, batch)
        assert m.get("ips_approx", False) is approx, (act, prec, batch)
    # and nothing more: the same rows in the same order
    flat = [(a, p, b) for a, ps in lat.items() for p, bs in ps.items() for b in bs]
    assert flat == [r[:3] for r in rows]
    assert list(lat) == ACTIVATIONS


def test_every_accuracy_and_delta_row_matches_the_seed(baseline: Baseline, seed: tuple) -> None:
    _, accuracy, deltas = seed
    assert list(accuracy) == ACTIVATIONS and list(deltas) == ACTIVATIONS
    for act in ACTIVATIONS:
        assert list(baseline.data["accuracy"][act]) == list(EVAL_ROWS.values())
        for row, printed in accuracy[act].items():
            assert [baseline.data["accuracy"][act][row][k] for k in METRICS] == [float(x) for x in printed]
        assert [baseline.data["deltas"][act][k] for k in METRICS] == [float(x) for x in deltas[act]]
        assert all(x[0] in "+-" for x in deltas[act])  # the record prints explicit signs


def test_printed_deltas_agree_with_the_accuracy_rows(baseline: Baseline) -> None:
    # Checked by hand as well: all 20 printed deltas are exactly INT8 (TensorRT) - Origin (Pytorch) of
    # the printed accuracy rows, so there is no disagreement in the record to document here.
    recomputed = deltas_from_accuracy(baseline.data["accuracy"])
    assert list(recomputed) == ACTIVATIONS
    for act in ACTIVATIONS:
        for k in METRICS:
            assert abs(recomputed[act][k] - baseline.data["deltas"][act][k]) <= 0.0002, (act, k)


def test_images_per_second_is_queries_times_batch(baseline: Baseline) -> None:
    # the record's IPS column is qps x batch; the Resilience rows (measured at batch 8) print it as "≈"
    for act, per_prec in baseline.data["latency"].items():
        for prec, per_batch in per_prec.items():
            for batch, m in per_batch.items():
                n = 8 if batch == "resilience" else int(batch)
                assert m["ips"] == m["qps"] * n, (act, prec, batch)


def test_tolerances_are_data(baseline: Baseline) -> None:
    tol = baseline.data["tolerances"]
    assert tol["latency"] == {k: {"relative": 0.15} for k in ("p99_ms", "qps", "ips")}
    assert tol["accuracy"]["AP"] == tol["accuracy"]["AP50"] == {"absolute": 0.003}
    assert tol["accuracy"]["precision"] == tol["accuracy"]["recall"] == {"absolute": 0.02}
    assert all(v == {"absolute": 0.005} for v in tol["deltas"].values())
    # the record's own INT8 (TensorRT) vs INT8 (Pytorch) gap fits inside the AP / AP50 tolerance
    for act, rows in baseline.data["accuracy"].items():
        for k in ("AP", "AP50"):
            assert abs(rows["int8_tensorrt"][k] - rows["int8_pytorch"][k]) <= 0.003, (act, k)


# ---- checking measured values -----------------------------------------------------------------------


def test_check_within_and_out_of_tolerance(baseline: Baseline) -> None:
    f = baseline.figure("latency-SiLU-int8-b1-p99_ms")  # 2.89 ms +- 15 %
    assert f.check(2.89) is None and f.check(3.3) is None and f.check(2.46) is None
    msg = f.check(3.5)
    assert msg is not None and "\n" not in msg
    assert msg.startswith("latency-SiLU-int8-b1-p99_ms:")
    assert "expected 2.89 ms" in msg and "measured 3.50 ms" in msg and "15% relative" in msg
    assert compare(f, 3.5) == msg
    a = baseline.figure("accuracy-Mish-origin_pytorch-AP50")  # 0.6856 +- 0.003
    assert a.check(0.6884) is None
    assert a.check(0.69) == (
        "accuracy-Mish-origin_pytorch-AP50: expected 0.6856, measured 0.6900 (off by +0.0044; tolerance ±0.003 absolute)"
    )
    assert "expected ≈ 400 img/s" in (baseline.figure("latency-SiLU-int8-resilience-ips").check(100) or "")
    assert "not measured" in (a.check(None) or "")
    assert a.check(float("nan")) is not None


def test_damaged_baseline_fails_check(baseline: Baseline, tmp_path: Path) -> None:
    data = yaml.safe_load(RTX4050.read_text(encoding="utf-8"))
    data["latency"]["SiLU"]["int8"]["4"]["p99_ms"] = 12.5  # was 9.78
    data["accuracy"]["AconC"]["int8_tensorrt"]["AP"] = 0.3140  # was 0.318
    damaged_path = tmp_path / "damaged.yaml"
    damaged_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    damaged = load_baseline(damaged_path)
    assert baseline.check(baseline.data) == []
    messages = baseline.check(damaged.data)
    assert len(messages) == 2
    assert messages[0].startswith("latency-SiLU-int8-b4-p99_ms: expected 9.78 ms, measured 12.50 ms")
    assert messages[1].startswith("accuracy-AconC-int8_tensorrt-AP: expected 0.3180, measured 0.3140")
    # figure by figure, the same
    failing = [f.id for f in damaged.figures() if baseline.figure(f.id).check(f.value)]
    assert failing == ["latency-SiLU-int8-b4-p99_ms", "accuracy-AconC-int8_tensorrt-AP"]


def test_check_of_a_partial_measurement(baseline: Baseline) -> None:
    measured = {"latency": {"SiLU": {"int8": {1: {"p99_ms": 2.9, "qps": 345, "ips": 345}}}}}  # int batch key
    assert baseline.check(measured) == []
    missing = baseline.check(measured, require_all=True)
    assert len(missing) == 350 - 3 and all("not measured" in m for m in missing)


# ---- malformed files --------------------------------------------------------------------------------


def _damage(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


MALFORMED = {
    "syntax": (lambda t: t + "\nlatency: {SiLU: [\n", "not valid YAML"),
    "not-a-mapping": (lambda t: "- 1\n- 2\n", "<top level>: expected a mapping"),
    "text-number": (lambda t: _damage(t, "p99_ms: 9.78", 'p99_ms: "fast"'), "latency.SiLU.int8.4.p99_ms"),
    "bad-precision": (
        lambda t: _damage(t, "    fp16:\n", "    int4:\n"),
        "latency.SiLU.int4: unknown precision",
    ),
    "bad-batch": (lambda t: _damage(t, '"12": {', '"zero": {'), "latency.SiLU.int8.zero"),
    "missing-metric": (
        lambda t: _damage(t, ", qps: 347, ips: 347}", ", qps: 347}"),
        "latency.SiLU.int8.1.ips: missing",
    ),
    "extra-metric": (
        lambda t: _damage(t, "recall: 0.7074}", "recall: 0.7074, mAP: 1}"),
        "accuracy.SiLU.int8_tensorrt.mAP",
    ),
    "bad-eval-row": (
        lambda t: _damage(t, "int8_tensorrt: {AP: 0.3177", "int8_tensorrtt: {AP: 0.3177"),
        "accuracy.SiLU.int8_tensorrtt",
    ),
    "bad-tolerance": (
        lambda t: _damage(t, "p99_ms: {relative: 0.15}", "p99_ms: {percent: 15}"),
        "tolerances.latency.p99_ms",
    ),
    "no-tolerances": (lambda t: _damage(t, "tolerances:", "tolerance:"), "tolerance: unknown key"),
    "no-device-name": (lambda t: _damage(t, "  name: NVIDIA", "  label: NVIDIA"), "device.name"),
    "bool-number": (
        lambda t: _damage(t, "qps: 347", "qps: true"),
        "latency.SiLU.int8.1.qps: expected a finite number",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_baseline_is_a_config_error(case: str, tmp_path: Path) -> None:
    damage, key = MALFORMED[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(damage(RTX4050.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_baseline(path)
    text = str(err.value)
    assert str(path) in text and key in text and "\n" not in text


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_baseline(tmp_path / "nope.yaml")


# ---- finding a device's baseline --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        GPU,
        "nvidia geforce rtx 4050 laptop gpu",
        "  NVIDIA  GeForce RTX 4050\tLaptop GPU ",
        "GeForce RTX 4050 Laptop GPU",
        "NVIDIA GeForce RTX 4050",
    ],
)
def test_baseline_for_device_finds_the_rtx4050(name: str) -> None:
    assert baseline_for_device(name, RECORD_DIR) == RTX4050
    assert baseline_for_device(name, ROOT) == RTX4050  # a checkout that has baselines/record


@pytest.mark.parametrize(
    "name", ["NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4060 Laptop GPU", "RTX 4050", ""]
)
def test_baseline_for_device_none_for_other_devices(name: str) -> None:
    assert baseline_for_device(name, RECORD_DIR) is None


def test_baseline_for_device_default_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "src")
    assert find_baseline_dir() == RECORD_DIR
    assert baseline_for_device(GPU) == RTX4050
    assert baseline_for_device("NVIDIA H100 80GB HBM3") is None


def test_baseline_for_device_ambiguity(tmp_path: Path) -> None:
    text = RTX4050.read_text(encoding="utf-8")
    shutil.copy(RTX4050, tmp_path / "laptop.yaml")
    (tmp_path / "desktop.yaml").write_text(
        _damage(text, f"name: {GPU}", "name: NVIDIA GeForce RTX 4050"), encoding="utf-8"
    )
    (tmp_path / "notes.yaml").write_text("other: file\n", encoding="utf-8")  # no device: ignored
    assert baseline_for_device(GPU, tmp_path) == tmp_path / "laptop.yaml"  # exact names win
    assert baseline_for_device("nvidia geforce rtx 4050", tmp_path) == tmp_path / "desktop.yaml"
    assert baseline_for_device("GeForce RTX 4050", tmp_path) is None  # loosely both: ambiguous
    assert baseline_for_device(GPU, tmp_path / "missing") is None


# ---- writing a new device's baseline ----------------------------------------------------------------


def test_write_device_baseline_round_trip(baseline: Baseline, tmp_path: Path) -> None:
    measured = copy.deepcopy({"latency": baseline.data["latency"], "accuracy": baseline.data["accuracy"]})
    # no deltas: computed from the accuracy rows
    measured["latency"]["SiLU"]["int8"]["1"] = {**measured["latency"]["SiLU"]["int8"]["1"], "mean_ms": 2.5}
    device = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "sms": 132, "memory_mib": 81559}
    out = write_device_baseline(measured, device, tmp_path / "h100.yaml", source="test")
    assert out == tmp_path / "h100.yaml"
    assert [p.name for p in tmp_path.iterdir()] == ["h100.yaml"]  # no temporary file left behind
    new = load_baseline(out)
    assert new.device == device and new.data["source"] == "test"
    assert [(f.id, f.value, f.tolerance) for f in new.figures()] == [
        (f.id, f.value, f.tolerance) for f in baseline.figures()
    ]
    assert baseline.check(new.data, require_all=True) == []
    assert baseline_for_device("NVIDIA H100 80GB HBM3", tmp_path) == out
    assert "mean_ms" not in out.read_text(encoding="utf-8")


def test_write_device_baseline_validates_first(tmp_path: Path) -> None:
    bad = {"latency": {"SiLU": {"int8": {"1": {"p99_ms": "n/a", "qps": 1, "ips": 1}}}}}
    with pytest.raises(ConfigError, match=r"latency\.SiLU\.int8\.1\.p99_ms"):
        write_device_baseline(bad, {"name": "CPU"}, tmp_path / "cpu.yaml")
    assert list(tmp_path.iterdir()) == []


def test_write_device_baseline_other_comparison(tmp_path: Path) -> None:
    acc = {
        "SiLU": {
            "origin_onnxruntime": {"AP": 0.5, "AP50": 0.7, "precision": 0.6, "recall": 0.65},
            "int8_onnxruntime": {"AP": 0.49, "AP50": 0.71, "precision": 0.61, "recall": 0.6},
        }
    }
    path = write_device_baseline(
        {"accuracy": acc},
        {"name": "Intel Xeon", "threads": 2},
        tmp_path / "cpu.yaml",
        comparison=("int8_onnxruntime", "origin_onnxruntime"),
    )
    new = load_baseline(path)
    assert new.comparison == ("int8_onnxruntime", "origin_onnxruntime")
    assert new.data["deltas"] == {"SiLU": {"AP": -0.01, "AP50": 0.01, "precision": 0.01, "recall": -0.05}}
    assert [f.id for f in new.figures() if f.kind == "delta"] == [f"delta-SiLU-{k}" for k in METRICS]


def test_figure_is_a_plain_value() -> None:
    f = Figure(
        "latency-x-int8-b1-qps",
        "latency",
        100.0,
        "qps",
        Tolerance(0.1, True),
        ("latency", "x", "int8", "1", "qps"),
    )
    assert f.check(110) is None and f.check(89.9) is not None
    assert "-10.1%" in (f.check(89.9) or "")


def test_gpu_suite_has_one_case_per_seed_figure() -> None:
    """``pytest -m gpu --collect-only`` lists exactly one record case per figure of the seed record."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "record" / "test_record_gpu.py")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    cases = [line for line in out.stdout.splitlines() if "::test_record_figure[" in line]
    n = len(load_baseline(RECORD_DIR / "rtx4050.yaml").figures())
    assert n == 350
    assert len(cases) == n, out.stdout[-2000:] + out.stderr[-2000:]
    ids = {c.split("[", 1)[1].rstrip("]") for c in cases}
    assert "latency-SiLU-int8-b4-p99_ms" in ids and "delta-AconC-recall" in ids
