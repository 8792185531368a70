"""TensorRT engine cache: one engine per (ONNX content, precision, shape profile, TensorRT version,
GPU, engine-changing builder options), built once, under a file lock, written atomically.

Layout of a cache folder (default ``engines/`` in the cache root ``~/.cache/yolov9-qat`` or
``$YOLOV9_QAT_CACHE``; or ``$YOLOV9_QAT_ENGINE_CACHE``)::

    <key>.engine               the serialized engine
    <key>.engine.json          metadata: every key input, the engine's sha256, build time, layer summary
    <key>.engine.layers.json   per-layer precision / tactic summary (:mod:`yolov9_qat.runtime.inspect_engine`)
    <key>.engine.graph.json    TensorRT's engine-inspector JSON (input of ``--generate-graph``)
    <key>.lock                 the lock file

The metadata file is written last: an engine without matching metadata (interrupted build, another
TensorRT version or GPU, a file copied in by hand, a truncated engine) is rebuilt, never run. The
timing cache only makes builds faster, so it is not part of the key.

Nothing here imports TensorRT: the builder is a function argument (``build(onnx, options, out)``,
returning the inspector JSON or ``None``), so the whole cache logic runs on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from yolov9_qat.errors import UserError
from yolov9_qat.utils.files import atomic_path, atomic_write_json, atomic_write_text

log = logging.getLogger("yolov9_qat.runtime")

PRECISIONS = ("fp32", "fp16", "int8", "mp")
CACHE_SCHEMA = 1  # bump when the layout or the meaning of a key input changes
KEY_CHARS = 32  # hex characters of the sha256 used in file names

Shape = tuple[int, ...]
Builder = Callable[[Path, "BuildOptions", Path], "str | dict[str, Any] | None"]


# --- shapes ----------------------------------------------------------------------------------------
def parse_shape_spec(text: str, flag: str = "shapes") -> dict[str, Shape]:
    """trtexec's shape syntax: ``images:1x3x640x640`` (several inputs comma-separated).

    Raises :class:`UserError` with one line on a malformed spec.
    """
    example = "e.g. images:1x3x640x640"
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"--{flag}: empty shape spec; expected NAME:DxDxD..., {example}")
    out: dict[str, Shape] = {}
    for item in text.split(","):
        item = item.strip()
        name, sep, dims = item.rpartition(":")
        name = name.strip().strip("'\"")
        if not sep or not name or not dims:
            raise UserError(f"--{flag} {text!r}: expected NAME:DxDxD..., {example}")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise UserError(
                f"--{flag} {text!r}: dimensions must be integers joined by 'x', {example}"
            ) from None
        if any(d < 1 for d in shape):
            raise UserError(f"--{flag} {text!r}: every dimension must be a positive integer")
        if name in out:
            raise UserError(f"--{flag} {text!r}: input {name!r} is given twice")
        out[name] = shape
    return out


def format_shape_spec(shapes: dict[str, Shape]) -> str:
    """The inverse of :func:`parse_shape_spec`: ``{"images": (1, 3, 640, 640)}`` -> ``images:1x3x640x640``."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in shapes.items())


@dataclass(frozen=True)
class ShapeProfile:
    """One optimization profile: min / opt / max shape of every dynamic input."""

    min: dict[str, Shape]
    opt: dict[str, Shape]
    max: dict[str, Shape]

    def __post_init__(self) -> None:
        if not self.min:
            raise UserError("a shape profile needs at least one input")
        if not (set(self.min) == set(self.opt) == set(self.max)):
            raise UserError(
                "--min-shapes, --opt-shapes and --max-shapes must name the same inputs, got "
                f"{sorted(self.min)}, {sorted(self.opt)}, {sorted(self.max)}"
            )
        for name in self.min:
            lo, mid, hi = self.min[name], self.opt[name], self.max[name]
            if not (len(lo) == len(mid) == len(hi)):
                raise UserError(
                    f"input {name!r}: min / opt / max shapes have different ranks ({lo}, {mid}, {hi})"
                )
            if any(not (a <= b <= c) for a, b, c in zip(lo, mid, hi, strict=True)):
                raise UserError(
                    f"input {name!r}: need min <= opt <= max in every dimension, got "
                    f"min {format_shape_spec({name: lo})}, opt {format_shape_spec({name: mid})}, "
                    f"max {format_shape_spec({name: hi})}"
                )

    @classmethod
    def parse(cls, min_spec: str, opt_spec: str, max_spec: str) -> ShapeProfile:
        """From the three trtexec-style specs (``--min-shapes`` ...)."""
        return cls(
            parse_shape_spec(min_spec, "min-shapes"),
            parse_shape_spec(opt_spec, "opt-shapes"),
            parse_shape_spec(max_spec, "max-shapes"),
        )

    @classmethod
    def for_batches(
        cls, chw: Shape, min_batch: int, opt_batch: int, max_batch: int, name: str = "images"
    ) -> ShapeProfile:
        """A batch-only dynamic profile for an image input of shape ``chw``."""
        chw = tuple(int(d) for d in chw)
        return cls(
            {name: (int(min_batch), *chw)}, {name: (int(opt_batch), *chw)}, {name: (int(max_batch), *chw)}
        )

    def to_json(self) -> dict[str, dict[str, list[int]]]:
        return {
            "min": {k: list(v) for k, v in sorted(self.min.items())},
            "opt": {k: list(v) for k, v in sorted(self.opt.items())},
            "max": {k: list(v) for k, v in sorted(self.max.items())},
        }

    def specs(self) -> tuple[str, str, str]:
        """The trtexec spellings (min, opt, max)."""
        return format_shape_spec(self.min), format_shape_spec(self.opt), format_shape_spec(self.max)


# --- key inputs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildOptions:
    """How to build one engine. ``timing_cache`` only speeds builds up and is not part of the key."""

    precision: str
    profile: ShapeProfile
    workspace_gib: float | None = None
    optimization_level: int | None = None
    timing_cache: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.workspace_gib is not None and self.workspace_gib <= 0:
            raise UserError(f"--workspace {self.workspace_gib}: must be a positive number of GiB")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise UserError(f"--builder-optimization-level {self.optimization_level}: must be 0..5")

    def engine_options(self) -> dict[str, Any]:
        """The builder options that change the engine (part of the key)."""
        return {"workspace_gib": self.workspace_gib, "optimization_level": self.optimization_level}


def trt_release(version: str) -> str:
    """A TensorRT version as ``major.minor.patch``: the wheel's ``trt.__version__`` has four fields
    (``10.13.0.35``), trtexec's banner three (``[TensorRT v100300]`` = ``10.3.0``); engines are
    compatible within one release, so the cache key and the load check compare these."""
    parts = re.findall(r"\d+", str(version))[:3]
    if not parts:
        return str(version)
    return ".".join(str(int(p)) for p in parts + ["0"] * (3 - len(parts)))


@dataclass(frozen=True)
class Target:
    """Where an engine runs: engines are specific to the TensorRT release and the GPU.
    ``trt_version`` is kept as :func:`trt_release` (major.minor.patch) whatever form it is given in."""

    trt_version: str
    gpu_name: str
    compute_capability: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "trt_version", trt_release(self.trt_version))

    def to_json(self) -> dict[str, str]:
        return {
            "trt_version": self.trt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
        }


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of a file's content, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def key_inputs(
    onnx_sha256: str, options: BuildOptions, target: Target, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything that decides the engine, as JSON: hashed into the key and stored in the metadata.

    ``extra`` holds tier-specific facts that change the engine (e.g. strongly typed vs flags, the
    AutoCast version that derived an FP16 graph).
    """
    return {
        "schema": CACHE_SCHEMA,
        "onnx_sha256": onnx_sha256,
        "precision": options.precision,
        "profile": options.profile.to_json(),
        **target.to_json(),
        "builder": {**options.engine_options(), **(extra or {})},
    }


def engine_key(inputs: dict[str, Any]) -> str:
    """The cache key of :func:`key_inputs`' result."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_CHARS]


#: the environment variable naming the package's one cache root (record artefacts, engines under it)
CACHE_ENV = "YOLOV9_QAT_CACHE"


def cache_root() -> Path:
    """The package's cache root: ``$YOLOV9_QAT_CACHE``, else ``~/.cache/yolov9-qat``. The record's
    artefacts (:mod:`yolov9_qat.record.cache`) live in it, TensorRT engines in its ``engines/``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "yolov9-qat"


def default_cache_dir() -> Path:
    """``$YOLOV9_QAT_ENGINE_CACHE``, else ``engines/`` in the cache root (:func:`cache_root`)."""
    env = os.environ.get("YOLOV9_QAT_ENGINE_CACHE")
    if env:
        return Path(env).expanduser()
    return cache_root() / "engines"


# --- the cache -------------------------------------------------------------------------------------
def sidecar_paths(engine: str | os.PathLike[str]) -> dict[str, Path]:
    """Files that travel with an engine ``E``: ``E.json`` (metadata), ``E.layers.json``, ``E.graph.json``."""
    engine = Path(engine)
    return {
        "meta": engine.with_name(engine.name + ".json"),
        "layers": engine.with_name(engine.name + ".layers.json"),
        "graph": engine.with_name(engine.name + ".graph.json"),
    }


@dataclass
class CachedEngine:
    """An engine in the cache (or exported from it) and its metadata."""

    key: str
    engine: Path
    metadata: dict[str, Any]
    hit: bool
    build_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def layers_path(self) -> Path:
        return sidecar_paths(self.engine)["layers"]

    @property
    def graph_path(self) -> Path:
        return sidecar_paths(self.engine)["graph"]

    @property
    def summary(self) -> dict[str, Any] | None:
        """The layer summary (counts only) stored in the metadata."""
        return self.metadata.get("layers")


class EngineCache:
    """A folder of engines keyed by :func:`engine_key`; safe for parallel processes."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()

    def engine_path(self, key: str) -> Path:
        return self.root / f"{key}.engine"

    def meta_path(self, key: str) -> Path:
        return sidecar_paths(self.engine_path(key))["meta"]

    def lock_path(self, key: str) -> Path:
        return self.root / f"{key}.lock"

    def _valid(self, key: str, inputs: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """(metadata, "") for a usable entry, else (None, why not)."""
        engine, meta_path = self.engine_path(key), self.meta_path(key)
        if not engine.is_file() and not meta_path.is_file():
            return None, ""
        if not meta_path.is_file():
            return None, "engine without metadata (interrupted build or copied in)"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None, "unreadable metadata"
        if meta.get("inputs") != inputs:
            diff = sorted(
                k
                for k in set(inputs) | set(meta.get("inputs") or {})
                if (meta.get("inputs") or {}).get(k) != inputs.get(k)
            )
            return None, f"metadata does not match ({', '.join(diff)})"
        if not engine.is_file():
            return None, "metadata without engine"
        if engine.stat().st_size != meta.get("engine_bytes") or file_sha256(engine) != meta.get(
            "engine_sha256"
        ):
            return None, "engine file does not match its recorded sha256 (truncated or replaced)"
        return meta, ""

    def lookup(self, inputs: dict[str, Any]) -> CachedEngine | None:
        """The cached engine for these key inputs, or ``None`` (no lock taken; read-only)."""
        key = engine_key(inputs)
        meta, _ = self._valid(key, inputs)
        return CachedEngine(key, self.engine_path(key), meta, hit=True) if meta else None

    def get_or_build(
        self,
        onnx_path: str | os.PathLike[str],
        options: BuildOptions,
        target: Target,
        build: Builder,
        extra: dict[str, Any] | None = None,
        onnx_sha256: str | None = None,
    ) -> CachedEngine:
        """The engine for ``onnx_path`` built with ``options`` for ``target``: from the cache, or
        built by ``build(onnx_path, options, tmp_engine_path)`` under the entry's lock.

        ``build`` writes the engine to the path it gets and returns TensorRT's inspector JSON (or
        ``None``); a summary of it is stored beside the engine and in the metadata.
        """
        from yolov9_qat.runtime.inspect_engine import summarize, write_layers_json

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise UserError(f"ONNX file {onnx_path} does not exist")
        inputs = key_inputs(onnx_sha256 or file_sha256(onnx_path), options, target, extra)
        key = engine_key(inputs)
        self.root.mkdir(parents=True, exist_ok=True)
        engine, side = self.engine_path(key), sidecar_paths(self.engine_path(key))
        with FileLock(str(self.lock_path(key))):
            meta, why = self._valid(key, inputs)
            if meta is not None:
                log.info("engine cache hit: %s", engine)
                return CachedEngine(key, engine, meta, hit=True)
            if why:
                log.warning("engine cache entry %s is stale (%s): rebuilding it", key, why)
                self.meta_path(key).unlink(missing_ok=True)  # never leave a stale entry looking valid
            t0 = time.perf_counter()
            with atomic_path(engine) as tmp:
                info = build(onnx_path, options, tmp)
                if not tmp.is_file() or tmp.stat().st_size == 0:
                    raise UserError(f"the TensorRT build of {onnx_path} produced no engine")
            build_s = time.perf_counter() - t0
            summary = None
            if info is not None:
                raw = info if isinstance(info, str) else json.dumps(info, indent=1)
                atomic_write_text(side["graph"], raw)
                summary = summarize(raw)
                write_layers_json(summary, side["layers"])
            meta = {
                "key": key,
                "inputs": inputs,
                "onnx_path": str(onnx_path.resolve()),
                "timing_cache": options.timing_cache,
                "engine_sha256": file_sha256(engine),
                "engine_bytes": engine.stat().st_size,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_s": round(build_s, 3),
                "layers": _counts_only(summary),
            }
            atomic_write_json(self.meta_path(key), meta)  # last: the commit marker
            log.info("built engine %s in %.1f s", engine, build_s)
            return CachedEngine(key, engine, meta, hit=False, build_s=build_s)


def _counts_only(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The summary without its per-layer list and name lists (those stay in ``E.layers.json``)."""
    if summary is None:
        return None
    return {k: v for k, v in summary.items() if k not in ("layers", "details")}


def export_engine(cached: CachedEngine, dest: str | os.PathLike[str]) -> Path:
    """Copy a cached engine to ``dest`` (``--save-engine``) with its metadata and layer files beside
    it (``dest.json``, ``dest.layers.json``, ``dest.graph.json``); atomic, skipped when ``dest``
    already holds the same engine."""
    dest = Path(dest)
    src_side, dst_side = sidecar_paths(cached.engine), sidecar_paths(dest)
    meta = {**cached.metadata, "cache_key": cached.key, "cache_engine": str(cached.engine)}
    same = (
        dest.is_file()
        and dst_side["meta"].is_file()
        and dest.stat().st_size == cached.metadata.get("engine_bytes")
        and file_sha256(dest) == cached.metadata.get("engine_sha256")
    )
    if dest.resolve() != cached.engine.resolve() and not same:
        with atomic_path(dest) as tmp:
            shutil.copyfile(cached.engine, tmp)
    for part in ("layers", "graph"):
        if src_side[part].is_file() and src_side[part].resolve() != dst_side[part].resolve():
            with atomic_path(dst_side[part]) as tmp:
                shutil.copyfile(src_side[part], tmp)
    atomic_write_json(dst_side["meta"], meta)
    return dest


def check_engine(engine: str | os.PathLike[str], target: Target) -> dict[str, Any] | None:
    """Refuse to run an engine whose metadata (``E.json``) says it was built for another TensorRT
    version or GPU, or whose bytes changed since; ``None`` when it has no metadata (an engine from
    elsewhere: TensorRT itself then checks the version when it loads it)."""
    engine = Path(engine)
    if not engine.is_file():
        raise UserError(f"engine {engine} does not exist")
    meta_path = sidecar_paths(engine)["meta"]
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{meta_path} is not readable JSON; delete it or rebuild {engine}") from None
    inputs = meta.get("inputs", {})
    built = Target(
        str(inputs.get("trt_version")), str(inputs.get("gpu_name")), str(inputs.get("compute_capability"))
    )
    if built != target:
        raise UserError(
            f"{engine} was built for TensorRT {built.trt_version} on {built.gpu_name} "
            f"(sm {built.compute_capability}); this machine has TensorRT {target.trt_version} on "
            f"{target.gpu_name} (sm {target.compute_capability}): rebuild it with `yolov9-qat build`"
        )
    if engine.stat().st_size != meta.get("engine_bytes") or file_sha256(engine) != meta.get("engine_sha256"):
        raise UserError(
            f"{engine} does not match the sha256 in {meta_path}: rebuild it with `yolov9-qat build`"
        )
    return meta
