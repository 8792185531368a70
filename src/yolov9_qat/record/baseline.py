"""Expected figures of a record (``baselines/record/*.yaml``): load, validate, flatten, compare, write.

Schema (every section keeps the order of the file; batch keys are strings)::

    source: 000_d6440160449dc7b2.txt          # where the figures come from (optional)
    device: {name: ..., compute_capability: "8.9", sms: 20, memory_mib: 6140, ...}
    comparison: {a: int8_tensorrt, b: origin_pytorch}   # what ``deltas`` are (optional, this default)
    tolerances:
      latency:  {p99_ms: {relative: 0.15}, qps: {relative: 0.15}, ips: {relative: 0.15}}
      accuracy: {AP: {absolute: 0.003}, AP50: ..., precision: ..., recall: ...}
      deltas:   {AP: {absolute: 0.005}, AP50: ..., precision: ..., recall: ...}
    latency:  {<activation>: {<precision>: {"<batch>" | resilience: {p99_ms:, qps:, ips:, ips_approx:}}}}
    accuracy: {<activation>: {<eval row>: {AP:, AP50:, precision:, recall:}}}
    deltas:   {<activation>: {AP:, AP50:, precision:, recall:}}

Precisions are the latency rows of :data:`yolov9_qat.record.rows.ROWS` (``fp32``, ``fp16``, ``int8``,
``mp``, ``int8ort``); evaluation rows are ``<model>_<backend>`` such as ``origin_pytorch``,
``int8_tensorrt`` (the evaluation rows of ``ROWS``, or composed from the words in
:mod:`yolov9_qat.record.tables`). ``ips_approx: true`` marks a value the record prints as "≈ 400".
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from yolov9_qat.errors import ConfigError
from yolov9_qat.record.rows import names, select
from yolov9_qat.record.tables import (
    LATENCY_METRICS,
    METRICS,
    RESILIENCE,
    deltas_from_accuracy,
    is_eval_key,
)
from yolov9_qat.utils.files import atomic_write_text

TOP_KEYS = ("source", "device", "comparison", "tolerances", "latency", "accuracy", "deltas", "notes")
LATENCY_UNITS: dict[str, str] = {"p99_ms": "ms", "qps": "qps", "ips": "img/s"}
#: the precisions a latency section may hold: the record's latency rows
PRECISIONS: tuple[str, ...] = names(select(latency=True))

#: the tolerances a new device's baseline gets unless told otherwise (see baselines/record/rtx4050.yaml)
DEFAULT_TOLERANCES: dict[str, dict[str, dict[str, float]]] = {
    "latency": {k: {"relative": 0.15} for k in LATENCY_METRICS},
    "accuracy": {
        "AP": {"absolute": 0.003},
        "AP50": {"absolute": 0.003},
        "precision": {"absolute": 0.02},
        "recall": {"absolute": 0.02},
    },
    "deltas": {k: {"absolute": 0.005} for k in METRICS},
}
_KIND_SECTION = {"latency": "latency", "accuracy": "accuracy", "delta": "deltas"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


# ---- figures ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """How far a measured value may be from the expected one: ``value`` absolute, or relative to it."""

    value: float
    relative: bool

    def allows(self, expected: float, measured: float) -> bool:
        """Whether ``measured`` is within this tolerance of ``expected``."""
        limit = self.value * abs(expected) if self.relative else self.value
        return math.isfinite(measured) and abs(measured - expected) <= limit + 1e-12

    def __str__(self) -> str:
        return f"±{self.value:.4g} absolute" if not self.relative else f"±{self.value * 100:.4g}% relative"


@dataclass(frozen=True)
class Figure:
    """One documented number of a record, e.g. ``latency-SiLU-int8-b4-p99_ms`` = 9.78 ms."""

    id: str
    kind: str  # "latency" | "accuracy" | "delta"
    value: float
    unit: str  # "ms", "qps", "img/s" or "" for metrics
    tolerance: Tolerance
    path: tuple[str, ...]  # keys in the baseline dict, e.g. ("latency", "SiLU", "int8", "4", "p99_ms")
    approximate: bool = False  # printed as "≈ value" in the record

    def _fmt(self, v: float) -> str:
        if self.kind == "delta":
            text = f"{v:+.4f}"
        elif self.kind == "accuracy":
            text = f"{v:.4f}"
        else:
            text = f"{v:.2f}" if self.unit == "ms" else f"{v:.6g}"
        return f"{text} {self.unit}" if self.unit else text

    def check(self, measured: float | None) -> str | None:
        """None when ``measured`` is within tolerance, else one line naming the figure and the numbers."""
        expected = f"{'≈ ' if self.approximate else ''}{self._fmt(self.value)}"
        if measured is None:
            return f"{self.id}: expected {expected}, not measured"
        measured = float(measured)
        if self.tolerance.allows(self.value, measured):
            return None
        off = measured - self.value
        if self.tolerance.relative and self.value:
            off_text = f"{off / abs(self.value):+.1%}"
        else:
            off_text = f"{off:+.4g}"
        return (
            f"{self.id}: expected {expected}, measured {self._fmt(measured)} "
            f"(off by {off_text}; tolerance {self.tolerance})"
        )


def compare(figure: Figure, measured: float | None) -> str | None:
    """``figure.check(measured)``: None within tolerance, else a one-line message."""
    return figure.check(measured)


def lookup(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` in a schema dict (batch keys may be ints there), None if missing."""
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping):
            return None
        if key in node:
            node = node[key]
        elif key.isdigit() and int(key) in node:
            node = node[int(key)]
        else:
            return None
    return node


# ---- the baseline -----------------------------------------------------------------------------------


@dataclass
class Baseline:
    """A validated baseline file; ``data`` is the normalised schema dict (batch keys are strings)."""

    path: Path
    data: dict[str, Any]

    @property
    def device(self) -> dict[str, Any]:
        return self.data["device"]

    @property
    def comparison(self) -> tuple[str, str]:
        """The two evaluation rows whose difference ``deltas`` holds: (a, b) for "a vs b"."""
        c = self.data.get("comparison") or {}
        return c.get("a", "int8_tensorrt"), c.get("b", "origin_pytorch")

    def tolerance(self, kind: str, metric: str) -> Tolerance:
        """The tolerance for one metric of one kind of figure ("latency", "accuracy", "delta")."""
        spec = self.data["tolerances"][_KIND_SECTION[kind]][metric]
        ((mode, value),) = spec.items()
        return Tolerance(float(value), relative=mode == "relative")

    def figures(self) -> list[Figure]:
        """Every documented figure, flat, in file order, each with a stable id."""
        out: list[Figure] = []
        for act, per_prec in self.data.get("latency", {}).items():
            for prec, per_batch in per_prec.items():
                for batch, m in per_batch.items():
                    tag = batch if batch == RESILIENCE else f"b{batch}"
                    for k in LATENCY_METRICS:
                        out.append(
                            Figure(
                                id=f"latency-{act}-{prec}-{tag}-{k}",
                                kind="latency",
                                value=float(m[k]),
                                unit=LATENCY_UNITS[k],
                                tolerance=self.tolerance("latency", k),
                                path=("latency", act, prec, batch, k),
                                approximate=bool(m.get(f"{k}_approx", False)),
                            )
                        )
        for act, per_row in self.data.get("accuracy", {}).items():
            for row, m in per_row.items():
                for k in METRICS:
                    out.append(
                        Figure(
                            id=f"accuracy-{act}-{row}-{k}",
                            kind="accuracy",
                            value=float(m[k]),
                            unit="",
                            tolerance=self.tolerance("accuracy", k),
                            path=("accuracy", act, row, k),
                        )
                    )
        for act, d in self.data.get("deltas", {}).items():
            for k in METRICS:
                out.append(
                    Figure(
                        id=f"delta-{act}-{k}",
                        kind="delta",
                        value=float(d[k]),
                        unit="",
                        tolerance=self.tolerance("delta", k),
                        path=("deltas", act, k),
                    )
                )
        return out

    def figure(self, figure_id: str) -> Figure:
        """The figure with this id (KeyError naming it if there is none)."""
        for f in self.figures():
            if f.id == figure_id:
                return f
        raise KeyError(f"{self.path}: no figure {figure_id!r}")

    def check(self, measured: Mapping[str, Any], require_all: bool = False) -> list[str]:
        """Compare a measured dict in the same schema: one message per figure out of tolerance.

        Figures the measurement lacks are reported only with ``require_all``.
        """
        messages = []
        for f in self.figures():
            value = lookup(measured, f.path)
            if value is None and not require_all:
                continue
            msg = f.check(value)
            if msg:
                messages.append(msg)
        return messages


# ---- validation -------------------------------------------------------------------------------------


class _Validator:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: tuple[Any, ...], problem: str) -> ConfigError:
        key = ".".join(str(p) for p in path) or "<top level>"
        return ConfigError(f"{self.where}: {key}: {problem}")

    def mapping(self, node: Any, path: tuple[Any, ...], nonempty: bool = True) -> Mapping[Any, Any]:
        if not isinstance(node, Mapping):
            raise self.fail(path, f"expected a mapping, got {type(node).__name__}")
        if nonempty and not node:
            raise self.fail(path, "is empty")
        return node

    def number(self, node: Any, path: tuple[Any, ...]) -> float | int:
        if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
            raise self.fail(path, f"expected a finite number, got {node!r}")
        return node

    def name(self, key: Any, path: tuple[Any, ...]) -> str:
        if not isinstance(key, str) or not _NAME_RE.match(key):
            raise self.fail((*path, key), "expected a name of letters, digits, '_', '.', '+' or '-'")
        return key

    def metrics(
        self, node: Any, path: tuple[Any, ...], keys: tuple[str, ...], extra: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        node = self.mapping(node, path)
        for k in node:
            if k not in keys and k not in extra:
                raise self.fail((*path, k), f"unknown key; expected {', '.join(keys)}")
        out: dict[str, Any] = {}
        for k in keys:
            if k not in node:
                raise self.fail((*path, k), "missing")
            out[k] = self.number(node[k], (*path, k))
        for k in extra:
            if k in node:
                if not isinstance(node[k], bool):
                    raise self.fail((*path, k), f"expected true or false, got {node[k]!r}")
                out[k] = node[k]
        return out

    def tolerances(self, node: Any) -> dict[str, Any]:
        node = self.mapping(node, ("tolerances",))
        out: dict[str, Any] = {}
        for section, keys in (("latency", LATENCY_METRICS), ("accuracy", METRICS), ("deltas", METRICS)):
            path = ("tolerances", section)
            sec = self.mapping(node.get(section), path)
            for k in sec:
                if k not in keys:
                    raise self.fail((*path, k), f"unknown key; expected {', '.join(keys)}")
            out[section] = {}
            for k in keys:
                spec = sec.get(k)
                if (
                    not isinstance(spec, Mapping)
                    or len(spec) != 1
                    or next(iter(spec)) not in ("absolute", "relative")
                ):
                    raise self.fail((*path, k), f"expected {{absolute: x}} or {{relative: x}}, got {spec!r}")
                ((mode, value),) = spec.items()
                if self.number(value, (*path, k, mode)) < 0:
                    raise self.fail((*path, k, mode), "must not be negative")
                out[section][k] = {mode: value}
        for section in node:
            if section not in out:
                raise self.fail(("tolerances", section), "unknown key; expected latency, accuracy, deltas")
        return out

    def latency(self, node: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for act, per_prec in self.mapping(node, ("latency",)).items():
            act = self.name(act, ("latency",))
            out[act] = {}
            for prec, per_batch in self.mapping(per_prec, ("latency", act)).items():
                if prec not in PRECISIONS:
                    raise self.fail(
                        ("latency", act, prec),
                        f"unknown precision; expected one of {', '.join(PRECISIONS)}",
                    )
                out[act][prec] = {}
                for batch, m in self.mapping(per_batch, ("latency", act, prec)).items():
                    b = str(batch)
                    if isinstance(batch, bool) or not (b == RESILIENCE or (b.isdigit() and int(b) > 0)):
                        raise self.fail(
                            ("latency", act, prec, batch), f"expected a batch size or {RESILIENCE!r}"
                        )
                    if b in out[act][prec]:
                        raise self.fail(("latency", act, prec, batch), "duplicate batch")
                    extra = tuple(f"{k}_approx" for k in LATENCY_METRICS)
                    out[act][prec][b] = self.metrics(m, ("latency", act, prec, b), LATENCY_METRICS, extra)
        return out

    def accuracy(self, node: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for act, per_row in self.mapping(node, ("accuracy",)).items():
            act = self.name(act, ("accuracy",))
            out[act] = {}
            for row, m in self.mapping(per_row, ("accuracy", act)).items():
                if not isinstance(row, str) or not is_eval_key(row):
                    raise self.fail(
                        ("accuracy", act, row),
                        "unknown evaluation row; expected <model>_<backend> such as int8_tensorrt",
                    )
                out[act][row] = self.metrics(m, ("accuracy", act, row), METRICS)
        return out

    def deltas(self, node: Any) -> dict[str, Any]:
        node = self.mapping(node, ("deltas",))
        return {
            self.name(act, ("deltas",)): self.metrics(d, ("deltas", act), METRICS) for act, d in node.items()
        }

    def comparison(self, node: Any) -> dict[str, str]:
        node = self.mapping(node, ("comparison",))
        for k in node:
            if k not in ("a", "b"):
                raise self.fail(("comparison", k), "unknown key; expected a, b")
        for k in ("a", "b"):
            if not isinstance(node.get(k), str) or not is_eval_key(node[k]):
                raise self.fail(
                    ("comparison", k),
                    f"expected an evaluation row such as int8_tensorrt, got {node.get(k)!r}",
                )
        return {"a": node["a"], "b": node["b"]}

    def device(self, node: Any) -> dict[str, Any]:
        node = self.mapping(node, ("device",))
        if not isinstance(node.get("name"), str) or not node["name"].strip():
            raise self.fail(("device", "name"), "expected the device's name")
        for k, v in node.items():
            if not isinstance(k, str):
                raise self.fail(("device", k), "expected a string key")
            if isinstance(v, (Mapping, list)):
                raise self.fail(("device", k), "expected a scalar")
        return dict(node)

    def baseline(self, data: Any) -> dict[str, Any]:
        data = self.mapping(data, ())
        for k in data:
            if k not in TOP_KEYS:
                raise self.fail((k,), f"unknown key; expected {', '.join(TOP_KEYS)}")
        for k in ("device", "tolerances"):
            if k not in data:
                raise self.fail((k,), "missing")
        if not any(k in data for k in ("latency", "accuracy", "deltas")):
            raise self.fail(("latency",), "missing (a baseline needs latency, accuracy or deltas)")
        out: dict[str, Any] = {}
        if "source" in data:
            if not isinstance(data["source"], str):
                raise self.fail(("source",), f"expected a string, got {data['source']!r}")
            out["source"] = data["source"]
        out["device"] = self.device(data["device"])
        if "comparison" in data:
            out["comparison"] = self.comparison(data["comparison"])
        out["tolerances"] = self.tolerances(data["tolerances"])
        for section in ("latency", "accuracy", "deltas"):
            if section in data:
                out[section] = getattr(self, section)(data[section])
        if "notes" in data:
            out["notes"] = data["notes"]
        return out


def validate(data: Any, where: str = "<baseline>") -> dict[str, Any]:
    """Check ``data`` against the schema and return it normalised; ConfigError naming the bad key."""
    return _Validator(where).baseline(data)


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(e).split())


def load_baseline(path: str | os.PathLike[str]) -> Baseline:
    """Read and validate a baseline YAML file (ConfigError naming the file and the bad key)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read baseline: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    return Baseline(path=path, data=validate(data, str(path)))


# ---- finding and writing device baselines -----------------------------------------------------------


def _norm_name(name: str) -> str:
    return " ".join(name.casefold().split())


def _loose_name(name: str) -> str:
    n = _norm_name(name)
    n = n.removeprefix("nvidia ")
    return n.removesuffix(" laptop gpu").strip()


def find_baseline_dir(start: str | os.PathLike[str] | None = None) -> Path | None:
    """``baselines/record`` of the checkout: walking up from ``start`` (default: the working directory),
    then beside this package's source tree; None if neither has one."""
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "baselines" / "record").is_dir():
            return d / "baselines" / "record"
    src_root = Path(__file__).resolve().parents[3] / "baselines" / "record"
    return src_root if src_root.is_dir() else None


def baseline_for_device(gpu_name: str, directory: str | os.PathLike[str] | None = None) -> Path | None:
    """The baseline file whose ``device.name`` is ``gpu_name``; None if there is none.

    ``directory`` is the folder of baselines, or a checkout that has ``baselines/record``; by default the
    checkout's ``baselines/record`` (see :func:`find_baseline_dir`). Names match ignoring case and
    spacing; failing that, ignoring an "NVIDIA " prefix and a " Laptop GPU" suffix, if only one file
    matches that way.
    """
    if directory is None:
        folder = find_baseline_dir()
        if folder is None:
            return None
    else:
        folder = Path(directory)
        if (folder / "baselines" / "record").is_dir():
            folder = folder / "baselines" / "record"
    if not folder.is_dir():
        return None
    names: list[tuple[Path, str]] = []
    for f in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            data = yaml.safe_load(f.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{f}: cannot read baseline: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{f}: not valid YAML: {_yaml_problem(e)}") from None
        device = data.get("device") if isinstance(data, Mapping) else None
        if isinstance(device, Mapping) and isinstance(device.get("name"), str):
            names.append((f, device["name"]))
    exact = [f for f, n in names if _norm_name(n) == _norm_name(gpu_name)]
    if len(exact) == 1:
        return exact[0]
    if exact:
        raise ConfigError(f"{folder}: several baselines for {gpu_name!r}: {', '.join(f.name for f in exact)}")
    loose = [f for f, n in names if _loose_name(n) == _loose_name(gpu_name)]
    return loose[0] if len(loose) == 1 else None


def write_device_baseline(
    measurements: Mapping[str, Any],
    device: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    source: str | None = None,
    tolerances: Mapping[str, Any] | None = None,
    comparison: tuple[str, str] = ("int8_tensorrt", "origin_pytorch"),
) -> Path:
    """Write a new device's baseline in the schema above, atomically; returns ``path``.

    ``measurements`` holds ``latency`` and/or ``accuracy`` (and optionally ``deltas``) in the schema;
    keys outside it (extra latency statistics) are dropped. ``deltas`` are computed from the accuracy
    rows ``comparison`` when not given. The result is validated before anything is written.
    """
    path = Path(path)
    data: dict[str, Any] = {}
    if source is not None:
        data["source"] = source
    data["device"] = dict(device)
    a, b = comparison
    if (a, b) != ("int8_tensorrt", "origin_pytorch"):
        data["comparison"] = {"a": a, "b": b}
    data["tolerances"] = dict(tolerances) if tolerances is not None else DEFAULT_TOLERANCES
    if measurements.get("latency"):
        keep = (*LATENCY_METRICS, *(f"{k}_approx" for k in LATENCY_METRICS))
        data["latency"] = {
            act: {
                prec: {str(bs): {k: m[k] for k in keep if k in m} for bs, m in per_batch.items()}
                for prec, per_batch in per_prec.items()
            }
            for act, per_prec in measurements["latency"].items()
        }
    if measurements.get("accuracy"):
        data["accuracy"] = {
            act: {row: {k: m[k] for k in METRICS if k in m} for row, m in rows.items()}
            for act, rows in measurements["accuracy"].items()
        }
    deltas = measurements.get("deltas") or deltas_from_accuracy(measurements.get("accuracy") or {}, a, b)
    if deltas:
        data["deltas"] = {act: dict(d) for act, d in deltas.items()}
    data = validate(data, str(path))
    text = (
        f"# Baseline for {data['device']['name']}, written by yolov9_qat.record.write_device_baseline.\n"
        "# Schema: see yolov9_qat/record/baseline.py. Tolerances: latency relative, metrics absolute.\n"
        + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    )
    atomic_write_text(path, text)
    return path
