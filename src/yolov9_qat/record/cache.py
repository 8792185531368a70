"""The artefact cache behind ``reproduce`` and the test suite's fixtures.

Every artefact (data set, trained weights, QAT checkpoint, ONNX file, metrics, benchmark) is a folder
``<root>/<step>/<key>/`` where ``key`` hashes everything that produced it: the step, its parameters,
the keys of its inputs and the source code of the sub-packages it runs. A folder is built in a
temporary sibling and renamed into place (so a half-built artefact never looks finished), under a
file lock (so parallel test workers build each artefact once and share it). Each build is appended
to ``<root>/builds.jsonl``: that log is how the suite proves the sharing.
"""

from __future__ import annotations

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

log = logging.getLogger("yolov9_qat.record")

DONE = "artefact.json"
ENV = "YOLOV9_QAT_CACHE"


def default_root() -> Path:
    """``$YOLOV9_QAT_CACHE``, else ``~/.cache/yolov9-qat``."""
    env = os.environ.get(ENV)
    return Path(env) if env else Path.home() / ".cache" / "yolov9-qat"


@_memo
def code_version(*subpackages: str) -> str:
    """A hash of the package's version and the source of the named sub-packages (``models``,
    ``quant`` ...; a ``.py`` name for a single module), so that changed code rebuilds what it makes."""
    pkg = Path(yolov9_qat.__file__).parent
    h = hashlib.sha256(yolov9_qat.__version__.encode())
    for name in sorted(set(subpackages)):
        target = pkg / name
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for f in files:
            if f.is_file():
                h.update(str(f.relative_to(pkg)).encode())
                h.update(f.read_bytes())
        if target.is_dir():  # shipped configs count too
            for f in sorted(target.rglob("*.yaml")):
                h.update(str(f.relative_to(pkg)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


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
        code: Iterable[str] = (),
    ) -> Path:
        """The artefact folder for ``(step, params)``; ``build(tmp_dir)`` makes it when missing."""
        key = artefact_key(step, params, code_version(*code))
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
