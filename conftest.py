"""Suite-wide pytest set-up: markers, the GPU gate, and the path to ``../shared``."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' shared helpers (tests/shared_helpers.py)
SHARED = Path(os.environ.get("YOLOV9_QAT_SHARED", ROOT.parent / "shared"))


def _gpu_skip_reason() -> str | None:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "needs a CUDA device (none here); run `pytest -m gpu` on a machine with an NVIDIA GPU"
    if importlib.util.find_spec("tensorrt") is None:
        return 'needs TensorRT (not installed); `pip install "yolov9-qat[gpu]"` on the GPU machine'
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("yolov9-qat record")
    g.addoption(
        "--data", default="", help="gpu record: data.yaml (e.g. coco.yaml); default: the embedded data"
    )
    g.addoption("--weights", default="", help="gpu record: converted checkpoint (yolov9-c-converted.pt)")
    g.addoption(
        "--activations",
        default="SiLU,ReLU,FReLU,Mish,AconC",
        help="comma-separated activations of the record",
    )
    g.addoption("--device", default="", help="torch device for the gpu record (default: cuda:0)")
    g.addoption(
        "--record-dir",
        default="",
        help="artefact cache of the fixtures (default $YOLOV9_QAT_CACHE or ~/.cache/yolov9-qat)",
    )
    g.addoption(
        "--rebuild-cache",
        default="",
        help="rebuild these cached steps (comma-separated, or 'all') this session",
    )
    g.addoption(
        "--update-baselines",
        action="store_true",
        help="write baselines/cpu (and gpu device baselines) from this run",
    )


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # n workers x 2 threads on 2 cores: OpenMP barriers stall
        import torch

        torch.set_num_threads(1)


def pytest_report_header(config: pytest.Config) -> str:
    """The CPU the figures come from (the CPU baseline names its own: ratios move between CPU models)."""
    from yolov9_qat.bench.device import cpu_device

    dev = cpu_device(1)
    return f"cpu: {dev['Device']}, {dev['Logical cores']} logical cores, VNNI {dev['VNNI']}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [it.nodeid for it in items if not ({"cpu", "gpu"} & {m.name for m in it.iter_markers()})]
    if unmarked:
        raise pytest.UsageError(f"every test must be marked cpu or gpu; unmarked: {', '.join(unmarked[:5])}")
    reason = None
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            reason = reason or _gpu_skip_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (the seed record, official checkpoints, reference tables)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is missing (CI lays shared/ beside the checkout; set YOLOV9_QAT_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def official_dir(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "official"


@pytest.fixture(scope="session")
def activations(request: pytest.FixtureRequest) -> list[str]:
    return [a for a in request.config.getoption("--activations").split(",") if a]


@pytest.fixture(scope="session")
def record_cache(request: pytest.FixtureRequest):
    """The artefact cache shared by the record fixtures (and by every xdist worker: file locks)."""
    from yolov9_qat.record.cache import Cache

    rebuild = [s for s in request.config.getoption("--rebuild-cache").split(",") if s]
    return Cache(request.config.getoption("--record-dir") or None, rebuild=rebuild)


@pytest.fixture(scope="session")
def cpu_pipeline(record_cache):
    """The ``test`` profile of the record's pipeline (one thread per worker)."""
    from yolov9_qat.record.pipeline import Pipeline, get_profile

    return Pipeline(get_profile("test"), record_cache, workers=0, progress=False, echo=None)
