"""The artefact cache behind ``reproduce`` and the test suite's fixtures.

Every artefact (data set, trained weights, QAT checkpoint, ONNX file, metrics, benchmark) is a folder
``<root>/<step>/<key>/`` where ``key`` hashes everything that produced it: the step, its parameters,
the keys of its inputs and the source code it runs (:func:`code_version`: the static import closure of
the step's root modules, with the package data they ship). A folder is built in a
temporary sibling and renamed into place (so a half-built artefact never looks finished), under a
file lock (so parallel test workers build each artefact once and share it). Each build is appended
to ``<root>/builds.jsonl``: that log is how the suite proves the sharing.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from functools import cache as _memo
from pathlib import Path
from typing import Any

from filelock import FileLock

import yolov9_qat
from yolov9_qat.runtime.engine_cache import CACHE_ENV, cache_root

log = logging.getLogger("yolov9_qat.record")

DONE = "artefact.json"
ENV = CACHE_ENV
PACKAGE = "yolov9_qat"
#: package data that counts as code: the YAML files a package ships (model and hyperparameter configs)
DATA_SUFFIXES: tuple[str, ...] = (".yaml", ".yml")


def default_root() -> Path:
    """``$YOLOV9_QAT_CACHE``, else ``~/.cache/yolov9-qat`` (TensorRT engines live in its ``engines/``)."""
    return cache_root()


def package_dir() -> Path:
    """The folder of the imported ``yolov9_qat`` package."""
    return Path(yolov9_qat.__file__).resolve().parent


def _module_file(pkg: Path, module: str) -> Path | None:
    """The source file of ``module`` (dotted, ``yolov9_qat...``) in the package folder ``pkg``, if any."""
    head, *parts = module.split(".")
    if head != PACKAGE:
        return None
    base = pkg.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if parts and base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imports(pkg: Path, module: str, source: Path) -> set[str]:
    """The ``yolov9_qat`` modules that ``module``'s source imports anywhere (function bodies included):
    ``import yolov9_qat.x``, ``from yolov9_qat.x import y`` (``yolov9_qat.x.y`` when that is a module,
    else ``yolov9_qat.x``) and relative imports."""
    tree = ast.parse(source.read_bytes(), filename=str(source))
    here = module if source.name == "__init__.py" else module.rpartition(".")[0]  # the importing package
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                if not anchor:
                    continue  # beyond the top-level package
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if alias.name != "*" and _module_file(pkg, sub) else base)
    return found


def _parents(module: str) -> list[str]:
    """``yolov9_qat.a.b`` -> ``["yolov9_qat", "yolov9_qat.a"]``: the packages importing it runs first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def code_closure(roots: Iterable[str], package: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """The modules that importing ``roots`` may run, by name: the static import closure over the package
    folder ``package`` (default: the imported one), following parent packages' ``__init__.py``.

    Conservative: every import statement counts, also inside functions and ``if TYPE_CHECKING``
    blocks. Imports of modules that do not exist in the folder are ignored; an unknown root is a
    ValueError.
    """
    pkg = Path(package) if package is not None else package_dir()
    todo: list[str] = []
    for root in roots:
        if _module_file(pkg, root) is None:
            raise ValueError(f"no module {root!r} in {pkg}")
        todo.append(root)
    seen: dict[str, Path] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        source = _module_file(pkg, module)
        if source is None:
            continue
        seen[module] = source
        todo += [m for m in (*_parents(module), *_imports(pkg, module, source)) if m not in seen]
    return dict(sorted(seen.items()))


def code_files(roots: Iterable[str], package: str | os.PathLike[str] | None = None) -> list[Path]:
    """The files whose bytes key ``roots``' code: the modules of :func:`code_closure` and the YAML data
    files of every package among them (in the package's folder and its non-package sub-folders), in
    the order of their paths relative to the package folder."""
    pkg = Path(package) if package is not None else package_dir()
    files = set(code_closure(roots, pkg).values())
    for source in list(files):
        if source.name == "__init__.py":
            files.update(_package_data(source.parent))
    return sorted(files, key=lambda f: f.relative_to(pkg).as_posix())


def _package_data(folder: Path) -> list[Path]:
    """The data files a package folder ships: :data:`DATA_SUFFIXES` files, recursing into sub-folders
    that are not packages themselves (``cfg/models``, ``cfg/hyps``)."""
    out = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix in DATA_SUFFIXES:
            out.append(entry)
        elif entry.is_dir() and not (entry / "__init__.py").is_file() and entry.name != "__pycache__":
            out += _package_data(entry)
    return out


def hash_code(
    roots: Iterable[str], package: str | os.PathLike[str] | None = None, version: str | None = None
) -> str:
    """:func:`code_version` without the memo (a package folder changed on disk hashes afresh)."""
    pkg = Path(package) if package is not None else package_dir()
    h = hashlib.sha256((version if version is not None else yolov9_qat.__version__).encode())
    for f in code_files(roots, pkg):
        data = f.read_bytes()
        h.update(b"\0" + f.relative_to(pkg).as_posix().encode() + b"\0" + str(len(data)).encode() + b"\0")
        h.update(data)
    return h.hexdigest()[:16]


@_memo
def _memo_hash_code(roots: frozenset[str], package: Path) -> str:
    return hash_code(sorted(roots), package)


def code_version(*roots: str, package: str | os.PathLike[str] | None = None) -> str:
    """A hash of the package version and of the code importing ``roots`` (dotted module names such as
    ``yolov9_qat.train.trainer``) may run: every module of their static import closure
    (:func:`code_closure`) and the YAML configs the packages among them ship, each by its path relative
    to the package folder and its bytes. So a changed module rebuilds exactly the artefacts of the steps
    that import it, directly, transitively or inside a function. Memoised per root set and folder."""
    pkg = Path(package).resolve() if package is not None else package_dir()
    return _memo_hash_code(frozenset(roots), pkg)


def artefact_key(step: str, params: Mapping[str, Any], code: str) -> str:
    blob = json.dumps({"step": step, "params": params, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Cache:
    """See the module docstring. ``rebuild`` names steps (or ``"all"``) to build afresh."""

    def __init__(self, root: str | Path | None = None, rebuild: Iterable[str] = ()) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.rebuild = set(rebuild)
        self._built: set[str] = set()  # keys built by this process (rebuilt once, not on every call)

    def path(self, step: str, key: str) -> Path:
        return self.root / step / key

    def get(
        self,
        step: str,
        params: Mapping[str, Any],
        build: Callable[[Path], Any],
        roots: Iterable[str] = (),
    ) -> Path:
        """The artefact folder for ``(step, params)``; ``build(tmp_dir)`` makes it when missing.

        ``roots``: the modules the build runs (dotted names); their import closure is part of the key
        (:func:`code_version`)."""
        key = artefact_key(step, params, code_version(*roots))
        out = self.path(step, key)
        fresh = bool({step, "all"} & self.rebuild) and key not in self._built
        if (out / DONE).is_file() and not fresh:
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(out.parent / f"{key}.lock")):
            if (out / DONE).is_file() and not fresh:  # another worker built it meanwhile
                return out
            tmp = out.parent / f".{key}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            t0 = time.perf_counter()
            try:
                build(tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            seconds = time.perf_counter() - t0
            meta = {"step": step, "key": key, "params": dict(params), "seconds": seconds, "pid": os.getpid()}
            (tmp / DONE).write_text(json.dumps(meta, indent=1, default=str))
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
            self._log({**meta, "params": None, "time": time.time()})
            self._built.add(key)
        return out

    def _log(self, entry: dict[str, Any]) -> None:
        with FileLock(str(self.root / "builds.jsonl.lock")), open(self.root / "builds.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    def builds(self) -> list[dict[str, Any]]:
        """Every build so far (``builds.jsonl``), oldest first."""
        p = self.root / "builds.jsonl"
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def meta(self, artefact: Path) -> dict[str, Any]:
        return json.loads((artefact / DONE).read_text())
