"""Engine cache: keys change with every input that changes the engine and with nothing else; entries
are built once under a lock, written atomically, and stale or foreign entries are rebuilt."""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from yolov9_qat.errors import UserError
from yolov9_qat.runtime.engine_cache import (
    BuildOptions,
    EngineCache,
    ShapeProfile,
    Target,
    check_engine,
    engine_key,
    export_engine,
    file_sha256,
    key_inputs,
    parse_shape_spec,
    sidecar_paths,
    trt_release,
)

pytestmark = pytest.mark.cpu

TARGET = Target("10.3.0", "NVIDIA GeForce RTX 4050 Laptop GPU", "8.9")
PROFILE = ShapeProfile.parse("images:1x3x640x640", "images:4x3x640x640", "images:8x3x640x640")
OPTIONS = BuildOptions("mp", PROFILE, workspace_gib=4.0, timing_cache="a.timing.cache")
INSPECTOR = {
    "Layers": [
        {
            "Name": "conv0",
            "LayerType": "CaskConvolution",
            "ParameterType": "Convolution",
            "Inputs": [{"Name": "images", "Format/Datatype": "Row major linear FP32"}],
            "Outputs": [
                {"Name": "t0", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}
            ],
        }
    ],
    "Bindings": ["images", "t0"],
}


class FakeBuilder:
    """Stands in for the TensorRT builder function: writes bytes derived from its inputs."""

    def __init__(self, delay: float = 0.0, info: object = INSPECTOR, fail: bool = False) -> None:
        self.calls: list[tuple[Path, BuildOptions]] = []
        self.delay, self.info, self.fail = delay, info, fail

    def __call__(self, onnx: Path, options: BuildOptions, out: Path) -> object:
        self.calls.append((onnx, options))
        if self.delay:
            time.sleep(self.delay)
        out.write_bytes(b"ENGINE:" + onnx.read_bytes() + options.precision.encode())
        if self.fail:
            raise RuntimeError("builder crashed half-way")
        return self.info


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    p = tmp_path / "model.onnx"
    p.write_bytes(b"fake onnx graph v1")
    return p


# --- shape specs -----------------------------------------------------------------------------------
def test_parse_shape_spec() -> None:
    assert parse_shape_spec("images:1x3x640x640") == {"images": (1, 3, 640, 640)}
    assert parse_shape_spec("'images':2X3x32x32, extra:5") == {"images": (2, 3, 32, 32), "extra": (5,)}
    assert parse_shape_spec("input:0:1x3") == {"input:0": (1, 3)}  # trtexec splits at the last colon


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "images",
        "images:",
        ":1x3x640x640",
        "images:1x3xAx640",
        "images:0x3x640x640",
        "images:1x-3",
        "a:1,a:2",
    ],
)
def test_bad_shape_specs_are_one_line_user_errors(spec: str) -> None:
    with pytest.raises(UserError) as e:
        parse_shape_spec(spec, "min-shapes")
    assert "\n" not in str(e.value) and "min-shapes" in str(e.value)


def test_profile_validation() -> None:
    with pytest.raises(UserError, match="min <= opt <= max"):
        ShapeProfile.parse("images:8x3x64x64", "images:4x3x64x64", "images:8x3x64x64")
    with pytest.raises(UserError, match="same inputs"):
        ShapeProfile.parse("images:1x3x64x64", "x:4x3x64x64", "images:8x3x64x64")
    with pytest.raises(UserError, match="ranks"):
        ShapeProfile.parse("images:1x3x64", "images:4x3x64x64", "images:8x3x64x64")
    p = ShapeProfile.for_batches((3, 640, 640), 1, 4, 8)
    assert p.specs() == ("images:1x3x640x640", "images:4x3x640x640", "images:8x3x640x640")
    assert p == PROFILE


def test_build_options_validation() -> None:
    with pytest.raises(UserError, match="precision"):
        BuildOptions("int4", PROFILE)
    with pytest.raises(UserError, match="workspace"):
        BuildOptions("fp16", PROFILE, workspace_gib=0)


# --- keys ------------------------------------------------------------------------------------------
def _key(sha: str = "a" * 64, options: BuildOptions = OPTIONS, target: Target = TARGET, extra=None) -> str:
    return engine_key(key_inputs(sha, options, target, extra))


def test_key_changes_with_every_engine_input() -> None:
    base = _key()
    variants = {
        "onnx content": _key(sha="b" * 64),
        "precision": _key(options=replace(OPTIONS, precision="int8")),
        "min shape": _key(options=replace(OPTIONS, profile=ShapeProfile.for_batches((3, 640, 640), 2, 4, 8))),
        "opt shape": _key(options=replace(OPTIONS, profile=ShapeProfile.for_batches((3, 640, 640), 1, 8, 8))),
        "max shape": _key(
            options=replace(OPTIONS, profile=ShapeProfile.for_batches((3, 640, 640), 1, 4, 16))
        ),
        "image size": _key(
            options=replace(OPTIONS, profile=ShapeProfile.for_batches((3, 320, 320), 1, 4, 8))
        ),
        "TensorRT version": _key(target=replace(TARGET, trt_version="10.8.0")),
        "GPU name": _key(target=replace(TARGET, gpu_name="NVIDIA H100 80GB HBM3")),
        "compute capability": _key(target=replace(TARGET, compute_capability="9.0")),
        "workspace": _key(options=replace(OPTIONS, workspace_gib=2.0)),
        "optimization level": _key(options=replace(OPTIONS, optimization_level=5)),
        "typed mode": _key(extra={"mode": "strongly-typed"}),
    }
    assert len({base, *variants.values()}) == len(variants) + 1, variants


def test_key_ignores_what_does_not_change_the_engine() -> None:
    base = _key()
    assert _key(options=replace(OPTIONS, timing_cache=None)) == base
    assert _key(options=replace(OPTIONS, timing_cache="/elsewhere/other.cache")) == base
    two = ShapeProfile(
        {"b": (1,), "images": (1, 3, 64, 64)},
        {"b": (1,), "images": (4, 3, 64, 64)},
        {"b": (1,), "images": (8, 3, 64, 64)},
    )
    swapped = ShapeProfile(
        {"images": (1, 3, 64, 64), "b": (1,)},
        {"images": (4, 3, 64, 64), "b": (1,)},
        {"images": (8, 3, 64, 64), "b": (1,)},
    )
    assert _key(options=replace(OPTIONS, profile=two)) == _key(options=replace(OPTIONS, profile=swapped))


def test_key_follows_onnx_content_not_path(onnx_file: Path, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "cache")
    builder = FakeBuilder()
    first = cache.get_or_build(onnx_file, OPTIONS, TARGET, builder)
    moved = tmp_path / "elsewhere" / "renamed.onnx"
    moved.parent.mkdir()
    shutil.copyfile(onnx_file, moved)
    second = cache.get_or_build(moved, replace(OPTIONS, timing_cache=None), TARGET, builder)
    assert second.hit and second.key == first.key and len(builder.calls) == 1


# --- get_or_build ----------------------------------------------------------------------------------
def test_build_once_then_hit(onnx_file: Path, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "cache")
    builder = FakeBuilder()
    first = cache.get_or_build(onnx_file, OPTIONS, TARGET, builder)
    assert not first.hit and len(builder.calls) == 1
    assert first.engine == tmp_path / "cache" / f"{first.key}.engine" and first.engine.is_file()
    meta = json.loads(sidecar_paths(first.engine)["meta"].read_text())
    assert meta["inputs"]["onnx_sha256"] == file_sha256(onnx_file)
    assert meta["inputs"]["precision"] == "mp" and meta["inputs"]["gpu_name"] == TARGET.gpu_name
    assert meta["inputs"]["profile"]["opt"] == {"images": [4, 3, 640, 640]}
    assert meta["inputs"]["builder"]["workspace_gib"] == 4.0 and meta["engine_sha256"] == file_sha256(
        first.engine
    )
    assert meta["layers"]["n_layers"] == 1 and meta["layers"]["fp32_layers"] == 1
    layers = json.loads(first.layers_path.read_text())
    assert layers["layers"][0]["name"] == "conv0" and first.graph_path.is_file()
    # the builder received the timing cache, which is not part of the key
    assert builder.calls[0][1].timing_cache == "a.timing.cache"

    second = cache.get_or_build(onnx_file, OPTIONS, TARGET, builder)
    assert second.hit and second.engine == first.engine and len(builder.calls) == 1
    assert cache.lookup(key_inputs(file_sha256(onnx_file), OPTIONS, TARGET)) is not None


def test_changed_onnx_rebuilds(onnx_file: Path, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "cache")
    builder = FakeBuilder()
    first = cache.get_or_build(onnx_file, OPTIONS, TARGET, builder)
    onnx_file.write_bytes(b"fake onnx graph v2")
    second = cache.get_or_build(onnx_file, OPTIONS, TARGET, builder)
    assert not second.hit and second.key != first.key and len(builder.calls) == 2


def _entry(cache: EngineCache, onnx_file: Path) -> tuple[str, Path, Path]:
    first = cache.get_or_build(onnx_file, OPTIONS, TARGET, FakeBuilder())
    return first.key, first.engine, sidecar_paths(first.engine)["meta"]


@pytest.mark.parametrize("damage", ["foreign metadata", "truncated engine", "no metadata", "bad json"])
def test_stale_or_foreign_entries_are_rebuilt(onnx_file: Path, tmp_path: Path, damage: str) -> None:
    cache = EngineCache(tmp_path / "cache")
    key, engine, meta_path = _entry(cache, onnx_file)
    if damage == "foreign metadata":  # e.g. the folder was copied from a machine with another TensorRT
        meta = json.loads(meta_path.read_text())
        meta["inputs"]["trt_version"] = "8.6.1"
        meta_path.write_text(json.dumps(meta))
    elif damage == "truncated engine":
        engine.write_bytes(engine.read_bytes()[:5])
    elif damage == "no metadata":
        meta_path.unlink()
    else:
        meta_path.write_text("{not json")
    assert cache.lookup(key_inputs(file_sha256(onnx_file), OPTIONS, TARGET)) is None
    builder = FakeBuilder()
    again = cache.get_or_build(onnx_file, OPTIONS, TARGET, builder)
    assert not again.hit and again.key == key and len(builder.calls) == 1
    assert json.loads(meta_path.read_text())["inputs"]["trt_version"] == TARGET.trt_version
    assert file_sha256(engine) == json.loads(meta_path.read_text())["engine_sha256"]


def test_failed_build_leaves_nothing(onnx_file: Path, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="half-way"):
        cache.get_or_build(onnx_file, OPTIONS, TARGET, FakeBuilder(fail=True))
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    builder = FakeBuilder()
    assert not cache.get_or_build(onnx_file, OPTIONS, TARGET, builder).hit and len(builder.calls) == 1


def test_empty_engine_is_an_error(onnx_file: Path, tmp_path: Path) -> None:
    def empty(onnx: Path, options: BuildOptions, out: Path) -> None:
        out.write_bytes(b"")

    with pytest.raises(UserError, match="produced no engine"):
        EngineCache(tmp_path / "cache").get_or_build(onnx_file, OPTIONS, TARGET, empty)


def test_builder_without_inspector_output(onnx_file: Path, tmp_path: Path) -> None:
    cached = EngineCache(tmp_path / "cache").get_or_build(onnx_file, OPTIONS, TARGET, FakeBuilder(info=None))
    assert cached.summary is None and not cached.layers_path.exists()


def test_missing_onnx_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        EngineCache(tmp_path).get_or_build(tmp_path / "nope.onnx", OPTIONS, TARGET, FakeBuilder())


def test_parallel_callers_build_once(onnx_file: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    builder = FakeBuilder(delay=0.3)
    results, errors = [], []

    def work() -> None:
        try:
            results.append(EngineCache(cache_dir).get_or_build(onnx_file, OPTIONS, TARGET, builder))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(builder.calls) == 1
    assert sorted(r.hit for r in results) == [False, True, True]
    assert len({r.engine for r in results}) == 1


def test_default_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("YOLOV9_QAT_ENGINE_CACHE", str(tmp_path / "engines"))
    assert EngineCache().root == tmp_path / "engines"


# --- export and checks before running ---------------------------------------------------------------
def test_export_and_check_engine(onnx_file: Path, tmp_path: Path) -> None:
    cached = EngineCache(tmp_path / "cache").get_or_build(onnx_file, OPTIONS, TARGET, FakeBuilder())
    dest = export_engine(cached, tmp_path / "out" / "model.mp.engine")
    side = sidecar_paths(dest)
    assert dest.read_bytes() == cached.engine.read_bytes()
    assert side["layers"].is_file() and side["graph"].is_file()
    assert json.loads(side["meta"].read_text())["cache_key"] == cached.key
    assert check_engine(dest, TARGET)["inputs"]["precision"] == "mp"
    assert check_engine(cached.engine, TARGET) is not None
    export_engine(cached, dest)  # again: same engine, nothing changes
    assert dest.read_bytes() == cached.engine.read_bytes()

    # built by trtexec (banner: three fields), loaded by the wheel (trt.__version__: four): one release
    assert check_engine(dest, replace(TARGET, trt_version="10.3.0.26")) is not None
    for other in (replace(TARGET, trt_version="11.0.0"), replace(TARGET, gpu_name="NVIDIA A100-SXM4-40GB"),
                  replace(TARGET, trt_version="10.3.1.5")):  # fmt: skip
        with pytest.raises(UserError, match="rebuild it") as e:
            check_engine(dest, other)
        assert "\n" not in str(e.value)
    dest.write_bytes(b"tampered")
    with pytest.raises(UserError, match="sha256"):
        check_engine(dest, TARGET)


def test_check_engine_without_metadata(tmp_path: Path) -> None:
    engine = tmp_path / "foreign.engine"
    engine.write_bytes(b"from trtexec")
    assert check_engine(engine, TARGET) is None
    with pytest.raises(UserError, match="does not exist"):
        check_engine(tmp_path / "missing.engine", TARGET)


def test_trt_release_is_major_minor_patch(onnx_file: Path, tmp_path: Path) -> None:
    assert trt_release("10.13.0.35") == "10.13.0"
    assert trt_release("11.4.0.106") == "11.4.0"
    assert trt_release("10.3") == "10.3.0"
    assert Target("10.13.0.35", "gpu", "9.0") == Target("10.13.0", "gpu", "9.0")
    # the cache key does not depend on which form the version came in
    cache = EngineCache(tmp_path / "cache")
    a = cache.get_or_build(onnx_file, OPTIONS, replace(TARGET, trt_version="10.3.0.26"), FakeBuilder())
    b = cache.get_or_build(onnx_file, OPTIONS, TARGET, FakeBuilder())
    assert a.key == b.key
