"""The TensorRT tier's options: one frozen :class:`EngineOptions`, and the argparse flags generated from it.

Each option is written once, as a dataclass field: its default, its help text and its flag spelling /
choices (the field's ``metadata``). :func:`add_engine_args` turns the fields of the requested groups
into flags; a command asks only for the groups whose flags it does not own itself (``val`` has its own
``--img`` and ``--device``, ``bench`` its own ``--img``, ``--warmup`` and ``--duration``), so nothing is
detected and nothing is shadowed. :meth:`EngineOptions.from_namespace` turns parsed arguments into
options at the CLI's edge; everything past it takes :class:`EngineOptions`.

Groups:

=========  ===========================================================================================
engine     ``--precision --timing-cache --no-timing-cache --workspace --builder-optimization-level
           --runner --engine-cache``
device     ``--device``
shapes     ``--min-shapes --opt-shapes --max-shapes``
img        ``--img / --imgsz``
loop       ``--use-cuda-graph --use-spin-wait --no-data-transfers --resilience``
timing     ``--warm-up --duration``
=========  ===========================================================================================
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from yolov9_qat.errors import UserError
from yolov9_qat.options import add_options, from_namespace, option
from yolov9_qat.runtime.engine_cache import PRECISIONS

RUNNERS = ("polygraphy", "trtexec")
PRECISION_CHOICES = ("auto", *PRECISIONS)
GROUPS = ("engine", "device", "shapes", "img", "loop", "timing")


def _option(default: Any, group: str, help: str, **kw: Any) -> Any:
    """A field of :class:`EngineOptions` in ``group`` (see :func:`yolov9_qat.options.option`)."""
    assert group in GROUPS, group
    return option(default, help, group=group, **kw)


@dataclass(frozen=True)
class EngineOptions:
    """How to build, cache and measure TensorRT engines (``build``, ``bench`` / ``val --backend tensorrt``,
    the GPU record). The model path, batch sizes and data set are the callers' own parameters."""

    # engine: how the engine is built and cached
    precision: str = _option(
        "auto", "engine", choices=PRECISION_CHOICES,
        help="fp32 | fp16 (float graph) | int8 | mp (Q/DQ graph; mp = INT8 + FP16, the record's "
        "--int8 --fp16); auto: mp for a Q/DQ graph, fp16 otherwise",
    )  # fmt: skip
    timing_cache: str | None = _option(
        None, "engine", "timing cache file (default: <onnx stem>.engine.timing.cache beside the ONNX)"
    )
    no_timing_cache: bool = _option(False, "engine", "build without a timing cache")
    workspace_gib: float | None = _option(
        None, "engine", "builder workspace limit in GiB", flags=("--workspace",), type=float
    )
    builder_optimization_level: int | None = _option(
        None, "engine", "TensorRT builder optimization level 0..5", type=int
    )
    runner: str = _option(
        "polygraphy", "engine", "build / measure with polygraphy or trtexec", choices=RUNNERS
    )
    engine_cache: str | None = _option(
        None, "engine", "engine cache folder (default ~/.cache/yolov9-qat/engines)"
    )
    # device
    device: str = _option("", "device", "CUDA device index")
    # shapes / img: the optimization profile (build)
    min_shapes: str | None = _option(None, "shapes", "e.g. images:1x3x640x640 (default: batch 1)")
    opt_shapes: str | None = _option(None, "shapes", "e.g. images:4x3x640x640 (default: batch 4)")
    max_shapes: str | None = _option(None, "shapes", "e.g. images:8x3x640x640 (default: batch 8)")
    img: int | None = _option(
        None, "img", "image size when the ONNX input size is dynamic", flags=("--img", "--imgsz"), type=int
    )
    # loop / timing: the benchmark loop (trtexec's method)
    use_cuda_graph: bool = _option(False, "loop", "launch inferences as a captured CUDA graph")
    use_spin_wait: bool = _option(False, "loop", "spin on the GPU event instead of a blocking wait")
    no_data_transfers: bool = _option(False, "loop", "no host <-> device copies in the loop")
    resilience: bool = _option(
        False, "loop", "add the 'Resilience' row: the min 1 / opt 4 / max 8 engine measured at batch 8"
    )
    warmup_ms: float = _option(
        500.0, "timing", "warm-up in ms (trtexec --warmUp)", flags=("--warm-up",), type=float
    )
    duration_s: float = _option(
        10.0, "timing", "measuring time per batch in s", flags=("--duration",), type=float
    )

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_CHOICES:
            raise UserError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISION_CHOICES)}")
        if self.runner not in RUNNERS:
            raise UserError(f"--runner {self.runner!r}: choose one of {', '.join(RUNNERS)}")

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> EngineOptions:
        """The options among parsed arguments: every field the namespace has (whichever parser added
        it, the command's own ``--img`` included); the others keep their defaults."""
        return from_namespace(cls, args)


def add_engine_args(parser: argparse.ArgumentParser, groups: Iterable[str]) -> None:
    """Add the flags of the :class:`EngineOptions` fields in ``groups`` (see :data:`GROUPS`) to
    ``parser``. Ask only for the groups whose flags the command does not own: a flag added twice is
    argparse's conflict error, not a silent skip."""
    wanted = tuple(groups)
    unknown = [g for g in wanted if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown option group(s) {unknown}; known: {', '.join(GROUPS)}")
    add_options(parser, EngineOptions, groups=wanted)


__all__ = ["GROUPS", "PRECISION_CHOICES", "RUNNERS", "EngineOptions", "add_engine_args"]
