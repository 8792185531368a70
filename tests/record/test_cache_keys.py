"""Artefact keys follow the code a step imports: the static import closure of its root modules (and the
configs the packages among them ship), computed over a throwaway copy of the package that each test
edits. One cache root holds the record's artefacts and, under ``engines/``, TensorRT's engines."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

import yolov9_qat
from yolov9_qat.record import gpu, pipeline
from yolov9_qat.record.cache import Cache, code_closure, code_files, code_version, default_root, hash_code
from yolov9_qat.runtime.engine_cache import EngineCache, default_cache_dir

pytestmark = pytest.mark.cpu

SRC = Path(yolov9_qat.__file__).resolve().parent
STEP_ROOTS: dict[str, tuple[str, ...]] = {**pipeline.STEP_ROOTS, **gpu.STEP_ROOTS}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the package, never edited (copying is the slow part)."""
    dest = tmp_path_factory.mktemp("pristine") / "yolov9_qat"
    shutil.copytree(SRC, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture
def pkg(pristine: Path, tmp_path: Path) -> Path:
    """A throwaway copy of the package folder for one test to edit."""
    dest = tmp_path / "yolov9_qat"
    shutil.copytree(pristine, dest)
    return dest


def key(pkg: Path, step: str) -> str:
    """The code part of ``step``'s artefact keys over the package folder ``pkg`` (not memoised)."""
    return hash_code(STEP_ROOTS[step], pkg)


def touch(pkg: Path, rel: str) -> None:
    """Change a file's bytes without changing what it does."""
    f = pkg / rel
    assert f.is_file(), rel
    f.write_bytes(f.read_bytes() + b"\n# touched\n")


def write(pkg: Path, rel: str, text: str) -> None:
    (pkg / rel).write_text(textwrap.dedent(text))


# ---- the real package ------------------------------------------------------------------------------


def test_every_step_has_existing_roots() -> None:
    for step, roots in STEP_ROOTS.items():
        closure = code_closure(roots)
        assert set(roots) <= set(closure), step
        assert "yolov9_qat" in closure and all(m.startswith("yolov9_qat") for m in closure), step
    with pytest.raises(ValueError, match=r"yolov9_qat\.no_such_module"):
        code_closure(["yolov9_qat.no_such_module"])


def test_keys_do_not_depend_on_the_folder_or_root_order(pristine: Path) -> None:
    for step, roots in STEP_ROOTS.items():
        assert hash_code(roots, pristine) == code_version(*roots), step  # same bytes, same relative paths
    roots = STEP_ROOTS["ort_eval"]
    assert code_version(*roots) == code_version(*reversed(roots)) == code_version(*roots, roots[0])
    assert len({code_version(*r) for r in STEP_ROOTS.values()}) == len(STEP_ROOTS)


def test_train_closure_has_configs_not_unrelated_modules() -> None:
    rel = {f.relative_to(SRC).as_posix() for f in code_files(STEP_ROOTS["train"])}
    assert {"train/trainer.py", "models/yolo.py", "eval/nms.py", "cfg/__init__.py"} <= rel
    assert "cfg/models/yolov9-n.yaml" in rel and "cfg/hyps/hyp.cpu-adamw.yaml" in rel
    assert not {"doctor.py", "export/lint.py", "cli.py"} & rel
    assert not any(r.startswith("record/") for r in rel)


@pytest.mark.parametrize(
    ("step", "module"),
    [
        ("train", "train/trainer.py"),  # the root itself
        ("train", "train/loss.py"),  # imported by the root
        ("train", "models/blocks.py"),  # transitively: trainer -> models.yolo -> models.blocks
        ("train", "eval/nms.py"),  # only through a function-level import: trainer -> eval.evaluator -> nms
        ("train", "models/__init__.py"),  # a parent package of an imported module
        ("convert", "models/reparam.py"),
        ("quantize", "quant/qat.py"),
        ("export", "export/end2end.py"),
        ("ort_eval", "runtime/onnxruntime.py"),
        ("bench", "bench/harness.py"),
        ("synth", "data/synth.py"),
        ("gpu_bench", "runtime/trt_cli.py"),
    ],
)
def test_touching_an_imported_module_changes_the_key(pkg: Path, step: str, module: str) -> None:
    before = key(pkg, step)
    touch(pkg, module)
    assert key(pkg, step) != before


@pytest.mark.parametrize(
    ("step", "module"),
    [
        ("train", "doctor.py"),
        ("train", "export/lint.py"),
        ("train", "cli.py"),
        ("train", "record/tables.py"),
        ("synth", "models/yolo.py"),
        ("convert", "train/trainer.py"),
        ("bench", "eval/evaluator.py"),
    ],
)
def test_touching_an_unrelated_module_keeps_the_key(pkg: Path, step: str, module: str) -> None:
    before = key(pkg, step)
    touch(pkg, module)
    assert key(pkg, step) == before


def test_configs_key_training(pkg: Path) -> None:
    before = {s: key(pkg, s) for s in ("train", "convert", "synth")}
    touch(pkg, "cfg/models/yolov9-n.yaml")
    after = {s: key(pkg, s) for s in before}
    assert after["train"] != before["train"] and after["convert"] != before["convert"]
    assert after["synth"] == before["synth"]  # the data set imports no configs
    write(pkg, "cfg/hyps/hyp.new.yaml", "lr0: 0.01\n")  # a new shipped config counts too
    assert key(pkg, "train") != after["train"]


def test_memoised_per_root_set(pkg: Path) -> None:
    roots = STEP_ROOTS["synth"]
    first = code_version(*roots, package=pkg)
    touch(pkg, "data/synth.py")
    assert code_version(*reversed(roots), package=pkg) == first  # memoised: one hash per process
    assert hash_code(roots, pkg) != first


# ---- the resolution rules, on a package made up for the test ------------------------------------------


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A made-up ``yolov9_qat`` with each kind of import."""
    root = tmp_path / "toy" / "yolov9_qat"
    for d in ("a", "b", "c", "data/configs"):
        (root / d).mkdir(parents=True)
    files = {
        "__init__.py": "__version__ = 'x'\n",
        "a/__init__.py": "from yolov9_qat.a.helpers import helper  # a name of a module: a.helpers\n",
        "a/helpers.py": "def helper():\n    return 1\n",
        "a/root.py": """
            import os
            import yolov9_qat.b.plain
            from typing import TYPE_CHECKING

            from yolov9_qat.b import sub, NAME
            from . import sibling
            from .. import top

            if TYPE_CHECKING:
                from yolov9_qat.c.typing_only import T


            def lazy():
                from yolov9_qat.c.lazy import go
                from yolov9_qat.missing import nothing
                return go
            """,
        "a/sibling.py": "from .deep import x\n",
        "a/deep.py": "x = 1\n",
        "a/unrelated.py": "x = 2\n",
        "b/__init__.py": "NAME = 'b'\n",
        "b/plain.py": "",
        "b/sub.py": "",
        "c/__init__.py": "",
        "c/lazy.py": "from yolov9_qat.data import load\n",
        "c/typing_only.py": "T = int\n",
        "top.py": "",
        "other.py": "",
        "data/__init__.py": "def load():\n    return 0\n",
        "data/shipped.yaml": "k: 1\n",
        "data/configs/deeper.yml": "k: 2\n",
        "data/configs/notes.txt": "not data\n",
    }
    for rel, text in files.items():
        write(root, rel, text)
    return root


def test_closure_resolution_rules(toy: Path) -> None:
    closure = code_closure(["yolov9_qat.a.root"], toy)
    assert list(closure) == sorted(
        [
            "yolov9_qat",
            "yolov9_qat.a",
            "yolov9_qat.a.deep",  # relative import of a relative import
            "yolov9_qat.a.helpers",  # the package __init__ of an imported module, and what it imports
            "yolov9_qat.a.root",
            "yolov9_qat.a.sibling",  # from . import sibling
            "yolov9_qat.b",  # from yolov9_qat.b import NAME (not a module: the package)
            "yolov9_qat.b.plain",  # import yolov9_qat.b.plain
            "yolov9_qat.b.sub",  # from yolov9_qat.b import sub (a module)
            "yolov9_qat.c",
            "yolov9_qat.c.lazy",  # a function-level import
            "yolov9_qat.c.typing_only",  # conservative: TYPE_CHECKING imports count
            "yolov9_qat.data",  # imported by the lazy module
            "yolov9_qat.top",  # from .. import top
        ]
    )
    assert closure["yolov9_qat.a"] == toy / "a" / "__init__.py"
    rel = [f.relative_to(toy).as_posix() for f in code_files(["yolov9_qat.a.root"], toy)]
    assert "data/shipped.yaml" in rel and "data/configs/deeper.yml" in rel  # data of a package in the closure
    assert "data/configs/notes.txt" not in rel and "other.py" not in rel and "a/unrelated.py" not in rel
    assert rel == sorted(rel)
    plain = [f.relative_to(toy).as_posix() for f in code_files(["yolov9_qat.b.plain"], toy)]
    assert plain == ["__init__.py", "b/__init__.py", "b/plain.py"]


def test_toy_keys(toy: Path) -> None:
    before = hash_code(["yolov9_qat.a.root"], toy)
    assert hash_code(["yolov9_qat.a.root"], toy, version="other") != before  # the version counts
    touch(toy, "a/unrelated.py")
    touch(toy, "data/configs/notes.txt")
    assert hash_code(["yolov9_qat.a.root"], toy) == before
    touch(toy, "a/deep.py")
    assert hash_code(["yolov9_qat.a.root"], toy) != before


# ---- the cache and its root ------------------------------------------------------------------------


def test_cache_get_with_roots(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    calls: list[Path] = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "x.txt").write_text("x")

    roots = STEP_ROOTS["synth"]
    out = cache.get("synth", {"n": 1}, build, roots)
    assert cache.get("synth", {"n": 1}, build, roots) == out and len(calls) == 1
    assert (out / "x.txt").read_text() == "x" and cache.meta(out)["step"] == "synth"
    assert cache.get("synth", {"n": 1}, build, STEP_ROOTS["train"]) != out  # other code, other artefact
    assert [b["step"] for b in cache.builds()] == ["synth", "synth"]


def test_one_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("YOLOV9_QAT_CACHE", raising=False)
    monkeypatch.delenv("YOLOV9_QAT_ENGINE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".cache" / "yolov9-qat"
    assert default_cache_dir() == default_root() / "engines" == EngineCache().root
    monkeypatch.setenv("YOLOV9_QAT_CACHE", str(tmp_path / "cache"))
    assert default_root() == tmp_path / "cache"
    assert EngineCache().root == tmp_path / "cache" / "engines"
    monkeypatch.setenv("YOLOV9_QAT_ENGINE_CACHE", str(tmp_path / "engines"))  # still wins
    assert EngineCache().root == tmp_path / "engines"
    assert EngineCache(tmp_path / "flag").root == tmp_path / "flag"  # --engine-cache
