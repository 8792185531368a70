"""ONNX Runtime backend (CPU): float, QAT (Q/DQ) and end-to-end graphs, for ``val`` and ``bench``.

On x86, ONNX Runtime runs TensorRT-style symmetric int8 activations (S8S8) slower than FP32, while the
same graph with uint8 activations and zero point 128 (U8S8) is numerically identical and takes its
fast kernels; :class:`OrtModel` applies that rewrite (:mod:`yolov9_qat.export.qdq_u8`) to quantized
graphs unless told not to.
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
from yolov9_qat.export.end2end import OUTPUT_NAMES, detections_from_outputs
from yolov9_qat.export.onnx import read_metadata

log = logging.getLogger("yolov9_qat.runtime")


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file; a missing, unreadable or invalid file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__})") from None
    if not proto.graph.node or not proto.graph.input:
        raise UserError(f"{path} is not an ONNX model (no graph)")
    return proto


def has_int8_activations(proto: onnx.ModelProto) -> bool:
    """True when some QuantizeLinear quantizes an activation to int8 (the S8S8 form)."""
    from yolov9_qat.export.qdq_u8 import count_qdq

    counts = count_qdq(proto)
    return bool(counts["activation_q"].get("int8", 0))


def default_threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", 0)) or (os.cpu_count() or 1)


class OrtModel:
    """One ONNX Runtime session over an exported graph.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: ``OMP_NUM_THREADS`` or all cores).
        u8: rewrite int8 activations to uint8 (zero point 128); ``None``: when the graph has any.
        optimize: ONNX Runtime's graph optimizations (``False``: none, for checking graphs as written).
    """

    def __init__(
        self, path: str | Path, threads: int | None = None, u8: bool | None = None, optimize: bool = True
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        proto = load_onnx(path)
        self.metadata = read_metadata(proto)
        self.end2end = [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
        self.quantized = any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
        self.u8 = bool(self.quantized and (has_int8_activations(proto) if u8 is None else u8))
        if self.u8:
            from yolov9_qat.export.qdq_u8 import to_u8

            proto = to_u8(proto)
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
        return outs[0]

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "onnx": str(self.path),
            "onnxruntime": ort.__version__,
            "precision": self.precision,
            "u8_rewrite": self.u8,
            "end2end": self.end2end,
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
