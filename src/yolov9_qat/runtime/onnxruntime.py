"""ONNX Runtime backend (CPU): float, QAT (Q/DQ) and end-to-end graphs, for ``val`` and ``bench``.

ONNX Runtime fuses ``DQ -> Conv -> Q`` into integer convolutions, but in TensorRT's placement a conv is
followed by its float activation, so it dequantizes and runs every conv of a QAT graph in float: the
graph as exported is slower than FP32. :class:`OrtModel` therefore rewrites quantized graphs first
(:mod:`yolov9_qat.export.ort_rewrite`), choosing with ``rewrite``:

* ``qlinear``: for graphs of the ``ort`` placement (every op's output quantized, ``quantize
  --placement ort``): uint8 activations and DQ moved below value-moving ops, both exact; ONNX Runtime
  then runs QLinearConv / QLinearSigmoid / QLinearMul / ... end to end in uint8;
* ``integer``: every quantized conv becomes an exact int32 ``ConvInteger`` plus a float epilogue (ORT's
  VNNI kernels; the same function up to float rounding) — the fastest exact form;
* ``u8``: activations to uint8 with zero point 128 (bit-identical outputs; ORT's U8S8 Q/DQ kernels);
* ``none``: the graph as written;
* ``auto`` (default): on CPUs with VNNI, ``qlinear`` for graphs of the ``ort`` placement and
  ``integer`` for TensorRT's; without VNNI (ORT's U8S8 kernels may saturate int16 pair sums there, so
  the rewrites would not be exact) ``none``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from yolov9_qat.bench.harness import Step
from yolov9_qat.errors import UserError
from yolov9_qat.export.deepstream import to_plain
from yolov9_qat.export.end2end import detections_from_outputs
from yolov9_qat.export.onnx import graph_layout, read_metadata

log = logging.getLogger("yolov9_qat.runtime")


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file (:func:`yolov9_qat.export.qdq_graph.load_model`: a missing or malformed file is
    one clear UserError)."""
    from yolov9_qat.export.qdq_graph import load_model

    proto = load_model(path)
    if not proto.graph.input:
        raise UserError(f"{path}: not an ONNX model (no graph inputs)")
    return proto


REWRITES = ("auto", "qlinear", "integer", "u8", "none")


def resolve_rewrite(rewrite: str, quantized: bool, output_qdq: bool = False) -> str:
    """``auto`` -> on a VNNI CPU ``qlinear`` (``output_qdq``: a graph of the ``ort`` placement) or
    ``integer``, else ``none``; float graphs are never rewritten."""
    if rewrite not in REWRITES:
        raise UserError(f"--ort-rewrite {rewrite!r}: choose one of {', '.join(REWRITES)}")
    if not quantized:
        return "none"
    if rewrite == "auto":
        from yolov9_qat.bench.device import cpu_device

        if not cpu_device(1)["VNNI"]:
            return "none"
        return "qlinear" if output_qdq else "integer"
    return rewrite


def default_threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", 0)) or (os.cpu_count() or 1)


class OrtModel:
    """One ONNX Runtime session over an exported graph.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: ``OMP_NUM_THREADS`` or all cores).
        rewrite: how a quantized graph is rewritten for ONNX Runtime (see the module docstring).
        optimize: ONNX Runtime's graph optimizations (``False``: none, for checking graphs as written).
    """

    def __init__(
        self, path: str | Path, threads: int | None = None, rewrite: str = "auto", optimize: bool = True
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        proto = load_onnx(path)
        self.metadata = read_metadata(proto)
        self.layout = graph_layout(proto)
        self.end2end = self.layout == "end2end"
        if self.layout == "deepstream" and "nc" not in self.metadata:
            raise UserError(f"{self.path}: a DeepStream-layout graph without its class count (metadata nc)")
        self.quantized = any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
        from yolov9_qat.export.ort_rewrite import has_output_qdq

        self.rewrite = resolve_rewrite(rewrite, self.quantized, self.quantized and has_output_qdq(proto))
        if self.rewrite == "qlinear":
            from yolov9_qat.export.ort_rewrite import to_ort_qlinear

            proto = to_ort_qlinear(proto)
        elif self.rewrite == "u8":
            from yolov9_qat.export.ort_rewrite import to_u8

            proto = to_u8(proto)
        elif self.rewrite == "integer":
            from yolov9_qat.export.ort_rewrite import to_ort_integer

            proto = to_ort_integer(proto)
        inp = proto.graph.input[0]
        self.input_name = inp.name
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        if len(dims) != 4:
            raise UserError(f"{self.path}: expected one image input (B, 3, H, W), found {len(dims)} dims")
        self.batch, self.channels, self.height, self.width = dims
        self.threads = threads or default_threads()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        if not optimize:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self.session = ort.InferenceSession(
                proto.SerializeToString(), so, providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{self.path}: ONNX Runtime cannot load it ({msg})") from None

    @property
    def precision(self) -> str:
        return str(self.metadata.get("precision") or ("int8" if self.quantized else "fp32"))

    def check_input(self, shape: tuple[int, ...]) -> None:
        """A clear error for images the graph cannot take."""
        if len(shape) != 4:
            raise UserError(f"{self.path} takes image batches (B, 3, H, W), got shape {tuple(shape)}")
        want = (self.channels, self.height, self.width)
        for got, need, what in zip(shape[1:], want, ("channels", "height", "width"), strict=True):
            if need is not None and got != need:
                raise UserError(
                    f"{self.path} takes {self.channels}x{self.height}x{self.width} images, got "
                    f"{'x'.join(map(str, shape[1:]))} ({what} differs); export it with --img {shape[-1]} "
                    "or evaluate with --img matching the export"
                )

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """Raw outputs for a float32 batch (split into the graph's fixed batch size when it has one)."""
        self.check_input(images.shape)
        if self.batch is None or self.batch == images.shape[0]:
            return self.session.run(None, {self.input_name: images})
        parts = []
        for i in range(0, images.shape[0], self.batch):
            chunk = images[i : i + self.batch]
            n = chunk.shape[0]
            if n < self.batch:  # pad the last chunk, drop the padding's outputs
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), chunk.dtype)])
            parts.append([o[:n] for o in self.session.run(None, {self.input_name: chunk})])
        return [np.concatenate(outs) for outs in zip(*parts, strict=True)]

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray | list[torch.Tensor]:
        """The evaluator's ``predict``: (B, 4 + nc, A) for plain graphs, per-image detections for
        end-to-end graphs."""
        x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
        outs = self.run(np.ascontiguousarray(x, dtype=np.float32))
        if self.end2end:
            return detections_from_outputs(*outs)
        if self.layout == "deepstream":
            return to_plain(outs[0], int(self.metadata["nc"])).numpy()
        return outs[0]

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "onnx": str(self.path),
            "onnxruntime": ort.__version__,
            "precision": self.precision,
            "rewrite": self.rewrite,
            "end2end": self.end2end,
            "layout": self.layout,
            "threads": self.threads,
        }


class OrtRunner:
    """The benchmark harness's runner for ONNX Runtime: random images, ``session.run`` per step."""

    backend = "onnxruntime"

    def __init__(self, model: OrtModel, imgsz: int | None = None, seed: int = 0) -> None:
        self.model = model
        self.imgsz = imgsz
        self.rng = np.random.default_rng(seed)

    def prepare(self, batch: int) -> Step:
        h = self.model.height or self.imgsz
        w = self.model.width or self.imgsz
        if h is None or w is None:
            raise UserError(f"{self.model.path} has a dynamic image size: give --img")
        if self.model.batch is not None and self.model.batch != batch:
            raise UserError(
                f"{self.model.path} has a fixed batch size {self.model.batch}; export with --dynamic"
            )
        x = self.rng.random((batch, 3, h, w), dtype=np.float32)
        feed = {self.model.input_name: x}
        session = self.model.session

        def step() -> None:
            session.run(None, feed)

        return step

    def device(self) -> dict[str, Any]:
        from yolov9_qat.bench.device import cpu_device

        return {**cpu_device(self.model.threads), **self.model.describe()}
