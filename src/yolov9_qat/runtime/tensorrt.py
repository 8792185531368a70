"""The TensorRT tier, kept thin: polygraphy builds and loads engines, TensorRT's own API runs them on
torch CUDA tensors (no pycuda), and everything else (keys, shapes, flags) is plain Python.

Precision -> build, per TensorRT tier (``precision_flags`` / :mod:`yolov9_qat.runtime.precision_graphs`):

=========  ==============================  ==================================================
precision  TensorRT 10 (builder flags)     TensorRT 11 (strongly typed; graph types decide)
=========  ==============================  ==================================================
fp32       float graph, no flag (TF32 on)  float graph
fp16       float graph, ``FP16``           AutoCast FP16 graph of the float graph
int8       Q/DQ graph, ``INT8``            Q/DQ graph (FP32 outside Q/DQ)
mp         Q/DQ graph, ``INT8`` + ``FP16`` AutoCast of the Q/DQ graph (FP16 outside Q/DQ)
=========  ==============================  ==================================================

The record's deployment and "Mixed Precision" benchmark commands use ``--int8 --fp16`` (= ``mp``), its
FP16 rows drop ``--int8`` on the float ("Origin") model (= ``fp16``), and its INT8 rows are the Q/DQ
graph with INT8 alone (= ``int8``). TF32 is left on, as trtexec does. The tier is chosen by
feature: a TensorRT without ``BuilderFlag.FP16`` is strongly typed; ``YOLOV9_QAT_STRONGLY_TYPED=1``
forces the strongly typed path on TensorRT 10 as well.

TensorRT and polygraphy are imported only inside functions; without them (or without CUDA) every
entry point raises one :class:`UserError` line that says what is missing and how to install it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from yolov9_qat.errors import UserError
from yolov9_qat.runtime.engine_cache import (
    BuildOptions,
    CachedEngine,
    EngineCache,
    Target,
    check_engine,
    export_engine,
    file_sha256,
)
from yolov9_qat.runtime.precision_graphs import (
    autocast_version,
    check_precision,
    graph_for_precision,
    graph_info,
    needs_derived_graph,
)

log = logging.getLogger("yolov9_qat.runtime")

INSTALL_HINT = 'pip install "yolov9-qat[gpu]"'
FLAGS_TRT10 = {"fp32": (), "fp16": ("fp16",), "int8": ("int8",), "mp": ("int8", "fp16")}
END2END_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")
PAD_VALUE = 114 / 255  # letterbox grey, for images smaller than the engine's input


# --- environment -----------------------------------------------------------------------------------
def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def missing_gpu_stack(need_tensorrt: bool = True, need_polygraphy: bool = True) -> list[str]:
    """What this machine lacks for the TensorRT tier (empty when nothing)."""
    missing = []
    if not _cuda_available():
        missing.append("no CUDA device is visible to PyTorch")
    if need_tensorrt and not _has_module("tensorrt"):
        missing.append("TensorRT is not installed")
    if need_polygraphy and not _has_module("polygraphy"):
        missing.append("polygraphy is not installed")
    return missing


def require_gpu_stack(
    what: str = "TensorRT", need_tensorrt: bool = True, need_polygraphy: bool = True
) -> None:
    """Raise one :class:`UserError` line naming everything missing for ``what``."""
    missing = missing_gpu_stack(need_tensorrt, need_polygraphy)
    if missing:
        raise UserError(
            f"{what} needs an NVIDIA GPU with TensorRT: {'; '.join(missing)} "
            f"(on a machine with an NVIDIA GPU: {INSTALL_HINT})"
        )


def import_tensorrt() -> Any:
    """``import tensorrt`` or one clear line (the registry's ``tensorrt`` stubs fail at import)."""
    try:
        import tensorrt as trt
    except Exception as e:
        raise UserError(
            f"TensorRT cannot be imported ({str(e).splitlines()[0]}); install it with {INSTALL_HINT}"
        ) from None
    return trt


def strongly_typed(trt: Any) -> bool:
    """TensorRT 11 removed ``BuilderFlag.FP16`` / ``INT8``: precision then comes from the graph."""
    return strongly_typed_env() or not hasattr(trt.BuilderFlag, "FP16")


def strongly_typed_env() -> bool:
    """``YOLOV9_QAT_STRONGLY_TYPED=1``: take the strongly typed path on TensorRT 10 too."""
    return os.environ.get("YOLOV9_QAT_STRONGLY_TYPED", "") not in ("", "0")


def gpu_name_and_cc(device: int = 0) -> tuple[str, str]:
    """GPU name and compute capability: PyTorch, else ``nvidia-smi`` (for trtexec-only machines)."""
    if _cuda_available():
        import torch

        p = torch.cuda.get_device_properties(device)
        return p.name, f"{p.major}.{p.minor}"
    smi = shutil.which("nvidia-smi")
    if smi:
        res = subprocess.run(
            [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        rows = [
            [p.strip() for p in line.split(",")] for line in res.stdout.strip().splitlines() if line.strip()
        ]
        if res.returncode == 0 and rows:
            index = smi_index(device, len(rows), os.environ)
            if index is None:
                raise UserError(
                    f"cannot tell which of nvidia-smi's {len(rows)} GPUs is CUDA device {device} (nvidia-smi "
                    "counts in PCI order, CUDA fastest first): set CUDA_DEVICE_ORDER=PCI_BUS_ID without "
                    "CUDA_VISIBLE_DEVICES, or install PyTorch with CUDA"
                )
            if len(rows[index]) == 2:
                return rows[index][0], rows[index][1]
    raise UserError(f"no CUDA device is visible (neither PyTorch nor nvidia-smi sees GPU {device})")


def smi_index(device: int, n_gpus: int, env: Mapping[str, str]) -> int | None:
    """The nvidia-smi row of CUDA device ``device``, where it is certain: one GPU, or CUDA counting
    in PCI order (``CUDA_DEVICE_ORDER=PCI_BUS_ID``) over all GPUs (no ``CUDA_VISIBLE_DEVICES``)."""
    if not 0 <= device < n_gpus:
        return None
    if n_gpus == 1:
        return 0
    if env.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID" and not env.get("CUDA_VISIBLE_DEVICES"):
        return device
    return None


def gpu_target(device: int = 0, trt_version: str | None = None) -> Target:
    """The :class:`Target` of this machine (TensorRT version, GPU name, compute capability)."""
    if trt_version is None:
        trt_version = import_tensorrt().__version__
    name, cc = gpu_name_and_cc(device)
    return Target(str(trt_version), name, cc)


def device_index(device: str | int | None) -> int:
    """``--device`` -> CUDA index: ``''`` / ``None`` -> 0, ``'0'`` / ``'cuda:1'`` -> the index."""
    if device is None or device == "":
        return 0
    if isinstance(device, int):
        return device
    text = str(device).strip().lower().removeprefix("cuda:")
    if text == "cpu":
        raise UserError("the TensorRT backend runs on a CUDA device; --device cpu is not possible")
    first = text.split(",")[0]
    if not first.isdigit():
        raise UserError(f"--device {device!r}: expected a CUDA index such as 0")
    return int(first)


# --- build -----------------------------------------------------------------------------------------
def precision_flags(precision: str, typed: bool) -> dict[str, bool]:
    """Builder precision flags for ``precision``: TensorRT 10 per :data:`FLAGS_TRT10`, none when typed."""
    if precision not in FLAGS_TRT10:
        raise UserError(f"precision {precision!r}: choose one of {', '.join(FLAGS_TRT10)}")
    flags = () if typed else FLAGS_TRT10[precision]
    return {"fp16": "fp16" in flags, "int8": "int8" in flags}


def create_config_kwargs(options: BuildOptions, typed: bool, has_tf32: bool = True) -> dict[str, Any]:
    """polygraphy ``CreateConfig`` keyword arguments (without profiles and memory pools, which need
    TensorRT objects)."""
    kw: dict[str, Any] = {**precision_flags(options.precision, typed), "tf32": bool(has_tf32)}
    if options.timing_cache:
        kw["load_timing_cache"] = str(options.timing_cache)
    if options.optimization_level is not None:
        kw["builder_optimization_level"] = int(options.optimization_level)
    return kw


def _polygraphy_error(e: Exception, onnx_path: Path) -> UserError:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return UserError(f"TensorRT could not build {onnx_path}: {lines[-1] if lines else type(e).__name__}")


def inspector_json(engine: Any) -> str:
    """TensorRT's engine-inspector JSON of a deserialized engine."""
    trt = import_tensorrt()
    inspector = engine.create_engine_inspector()
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


def build_engine(
    onnx_path: str | os.PathLike[str],
    options: BuildOptions,
    out: str | os.PathLike[str],
    typed: bool | None = None,
) -> str:
    """Build one engine with polygraphy into ``out``; returns its inspector JSON. ``onnx_path`` is the
    graph to build (already derived for the strongly typed tier, see :func:`build_cached`)."""
    require_gpu_stack("building a TensorRT engine")
    trt = import_tensorrt()
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineBytesFromNetwork,
        EngineFromBytes,
        NetworkFromOnnxPath,
        Profile,
    )

    typed = strongly_typed(trt) if typed is None else typed
    onnx_path = Path(onnx_path)
    profile = Profile()
    for name in options.profile.min:
        profile.add(
            name, min=options.profile.min[name], opt=options.profile.opt[name], max=options.profile.max[name]
        )
    kwargs = create_config_kwargs(options, typed, has_tf32=hasattr(trt.BuilderFlag, "TF32"))
    if options.workspace_gib:
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(options.workspace_gib * 2**30)}
    if options.timing_cache:
        Path(options.timing_cache).parent.mkdir(parents=True, exist_ok=True)
    network_kw = {}
    if typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        network_kw["strongly_typed"] = True
    try:
        network = NetworkFromOnnxPath(str(onnx_path), **network_kw)
        config = CreateConfig(profiles=[profile], **kwargs)
        blob = EngineBytesFromNetwork(network, config=config, save_timing_cache=options.timing_cache)()
        engine = EngineFromBytes(blob)()
    except UserError:
        raise
    except Exception as e:  # polygraphy reports build failures as PolygraphyException
        raise _polygraphy_error(e, onnx_path) from None
    Path(out).write_bytes(bytes(blob))
    return inspector_json(engine)


def build_cached(
    onnx_path: str | os.PathLike[str],
    options: BuildOptions,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    save_engine: str | os.PathLike[str] | None = None,
    device: int = 0,
    runner: str = "polygraphy",
) -> CachedEngine:
    """The engine for ``onnx_path`` / ``options`` from the engine cache, built on a miss (polygraphy,
    or trtexec with ``runner="trtexec"``); copied to ``save_engine`` with its sidecars when given."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UserError(f"ONNX file {onnx_path} does not exist")
    check_precision(onnx_path, options.precision, graph_info(onnx_path))
    if runner == "trtexec":
        from yolov9_qat.runtime import trtexec

        exe = trtexec.find_trtexec()
        version = trtexec.trtexec_version(exe)
        major = trtexec.version_major(version)
        typed = major >= 11 or strongly_typed_env()
        name, cc = gpu_name_and_cc(device)
        target = Target(version, name, cc)

        def build_one(graph: Path, opts: BuildOptions, out: Path) -> str | None:
            return trtexec.build_engine(
                graph, opts, out, typed=typed, trtexec=exe, device=device, trt_major=major
            )

    elif runner == "polygraphy":
        require_gpu_stack("building a TensorRT engine")
        trt = import_tensorrt()
        typed = strongly_typed(trt)
        target = gpu_target(device, trt.__version__)

        def build_one(graph: Path, opts: BuildOptions, out: Path) -> str | None:
            import torch

            with torch.cuda.device(device):
                return build_engine(graph, opts, out, typed=typed)

    else:
        raise UserError(f"--runner {runner!r}: choose polygraphy or trtexec")
    sha = file_sha256(onnx_path)
    extra: dict[str, Any] = {"mode": "strongly-typed" if typed else "flags"}
    if needs_derived_graph(options.precision, typed):
        extra["autocast"] = autocast_version()

    def build(src: Path, opts: BuildOptions, out: Path) -> str | None:
        graph = graph_for_precision(src, opts.precision, typed, onnx_sha256=sha)
        return build_one(graph, opts, out)

    cached = EngineCache(cache_dir).get_or_build(
        onnx_path, options, target, build, extra=extra, onnx_sha256=sha
    )
    if save_engine:
        cached.extra["saved"] = export_engine(cached, save_engine)
    return cached


# --- run -------------------------------------------------------------------------------------------
def _torch_dtype(trt_dtype: Any) -> Any:
    import torch

    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1].upper()
    table = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT8": torch.int8,
        "UINT8": torch.uint8,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "BOOL": torch.bool,
    }
    if name not in table:
        raise UserError(f"engine tensor type {name} is not supported by this runner")
    return table[name]


class EngineRunner:
    """One deserialized engine and an execution context whose I/O buffers are torch CUDA tensors
    (``set_tensor_address`` + ``execute_async_v3`` on a torch stream); optional CUDA-graph launch."""

    def __init__(self, engine_path: str | os.PathLike[str], device: int = 0, check: bool = True) -> None:
        require_gpu_stack("running a TensorRT engine")
        trt = import_tensorrt()
        import torch
        from polygraphy.backend.trt import EngineFromBytes

        self.path = Path(engine_path)
        self.device = torch.device("cuda", device)
        self.trt_version = trt.__version__
        self.metadata = check_engine(self.path, gpu_target(device, trt.__version__)) if check else None
        with torch.cuda.device(self.device):
            try:
                self.engine = EngineFromBytes(self.path.read_bytes())()
            except Exception as e:
                last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                raise UserError(f"TensorRT cannot load {self.path}: {last}") from None
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        if len(self.inputs) != 1:
            raise UserError(f"{self.path}: expected one image input, found {self.inputs}")
        self.input_name = self.inputs[0]
        lo, opt, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(self.input_name, 0))
        self.profile = {"min": lo, "opt": opt, "max": hi}
        self.buffers: dict[str, Any] = {}
        self.shape: tuple[int, ...] | None = None
        self.graph: Any = None

    @property
    def min_batch(self) -> int:
        return int(self.profile["min"][0])

    @property
    def max_batch(self) -> int:
        return int(self.profile["max"][0])

    @property
    def end2end(self) -> bool:
        return set(END2END_OUTPUTS) <= set(self.outputs)

    def allocate(self, shape: tuple[int, ...]) -> None:
        """Set the input shape and (re)allocate every I/O buffer; drops a captured CUDA graph."""
        import torch

        shape = tuple(int(d) for d in shape)
        if shape == self.shape:
            return
        if not self.context.set_input_shape(self.input_name, shape):
            raise UserError(
                f"input shape {shape} is outside the engine's profile (min {self.profile['min']}, max {self.profile['max']})"
            )
        buffers = {
            self.input_name: torch.empty(
                shape, dtype=_torch_dtype(self.engine.get_tensor_dtype(self.input_name)), device=self.device
            )
        }
        for name in self.outputs:
            out_shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in out_shape):
                raise UserError(f"output {name} has a data-dependent shape {out_shape}; not supported here")
            buffers[name] = torch.empty(
                out_shape, dtype=_torch_dtype(self.engine.get_tensor_dtype(name)), device=self.device
            )
        for name, t in buffers.items():
            self.context.set_tensor_address(name, t.data_ptr())
        self.buffers, self.shape, self.graph = buffers, shape, None

    def enqueue(self) -> None:
        import torch

        with torch.cuda.device(self.device):  # the engine's device, whatever the current one is
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.path}")

    def capture(self) -> Any:
        """Capture one inference as a ``torch.cuda.CUDAGraph`` (after one plain launch, as TensorRT
        requires after a shape change). When capture fails (an engine with a layer that cannot be
        captured) the capture is ended and inference falls back to plain enqueue, with a warning, as
        trtexec does; returns ``None`` then."""
        import torch

        self.enqueue()
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.device(self.device):
                with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                    self.enqueue()
                self.stream.synchronize()
        except RuntimeError as e:  # torch ends the capture on the way out; the error is not sticky
            self.graph = None
            torch.cuda.synchronize(self.device)
            reason = " ".join(str(e).split())[:200]
            log.warning("CUDA graph capture failed for %s (%s): plain enqueue instead", self.path, reason)
            return None
        self.graph = graph
        return graph

    def launch(self) -> None:
        """One inference on :attr:`stream`: the captured CUDA graph when there is one."""
        import torch

        if self.graph is not None:
            with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
                self.graph.replay()
        else:
            self.enqueue()

    def infer(self, images: Any) -> dict[str, Any]:
        """Run one batch (any torch tensor; copied to the input buffer) and return output copies."""
        import torch

        self.allocate(tuple(images.shape))
        with torch.cuda.stream(self.stream):
            self.buffers[self.input_name].copy_(images, non_blocking=True)
        self.launch()
        with torch.cuda.stream(self.stream):
            out = {name: self.buffers[name].clone() for name in self.outputs}
        self.stream.synchronize()
        for t in out.values():  # the caller uses them on its own stream
            t.record_stream(torch.cuda.current_stream(self.device))
        return out


class TensorRTRunner:
    """The harness :class:`~yolov9_qat.bench.harness.Runner` for TensorRT, trtexec's method.

    ``engines`` maps a batch size to the engine measured at it (the record builds one engine per batch,
    profile min 1 / opt = max = batch); ``step`` returns the latency from CUDA events (GPU compute time,
    plus the copies when data transfers are on); ``use_cuda_graph`` launches a captured graph,
    ``spin_wait`` polls the end event instead of a blocking wait, ``no_data_transfers`` skips the
    host <-> device copies.
    """

    backend = "tensorrt"

    def __init__(
        self,
        engines: str | os.PathLike[str] | Callable[[int], str | os.PathLike[str]],
        device: int = 0,
        use_cuda_graph: bool = False,
        spin_wait: bool = False,
        no_data_transfers: bool = False,
    ) -> None:
        self._engines = engines
        self.index = device
        self.use_cuda_graph, self.spin_wait, self.no_data_transfers = (
            use_cuda_graph,
            spin_wait,
            no_data_transfers,
        )
        self.engines_used: dict[int, str] = {}
        self._current: EngineRunner | None = None

    def engine_for(self, batch: int) -> Path:
        return Path(self._engines(batch) if callable(self._engines) else self._engines)

    def _runner(self, path: Path) -> EngineRunner:
        if self._current is None or self._current.path != path:
            self._current = None  # free the previous engine's memory first
            self._current = EngineRunner(path, self.index)
        return self._current

    def prepare(self, batch: int) -> Callable[[], float]:
        import torch

        path = self.engine_for(batch)
        runner = self._runner(path)
        if not runner.min_batch <= batch <= runner.max_batch:
            raise UserError(
                f"batch {batch} is outside {path.name}'s profile (batch {runner.min_batch}..{runner.max_batch})"
            )
        shape = (batch, *runner.profile["opt"][1:])
        runner.allocate(shape)
        self.engines_used[batch] = str(path)
        inp = runner.buffers[runner.input_name]
        with torch.cuda.stream(runner.stream):
            inp.copy_(torch.rand(shape, device=runner.device))
        runner.stream.synchronize()  # the random input is on the device before the host copy reads it
        host_in = host_out = None
        if not self.no_data_transfers:
            host_in = torch.empty(shape, dtype=inp.dtype, pin_memory=True).copy_(inp.cpu())
            host_out = {
                n: torch.empty(runner.buffers[n].shape, dtype=runner.buffers[n].dtype, pin_memory=True)
                for n in runner.outputs
            }
        if self.use_cuda_graph:
            runner.capture()
        runner.stream.synchronize()
        start = torch.cuda.Event(enable_timing=True, blocking=not self.spin_wait)
        end = torch.cuda.Event(enable_timing=True, blocking=not self.spin_wait)
        stream, spin = runner.stream, self.spin_wait

        def step() -> float:
            with torch.cuda.stream(stream):
                start.record(stream)
                if host_in is not None:
                    inp.copy_(host_in, non_blocking=True)
                runner.launch()
                if host_out is not None:
                    for name, host in host_out.items():
                        host.copy_(runner.buffers[name], non_blocking=True)
                end.record(stream)
            if spin:
                while not end.query():
                    pass
            else:
                end.synchronize()
            return float(start.elapsed_time(end))

        return step

    def device(self) -> dict[str, Any]:
        from yolov9_qat.bench.device import cuda_device

        out = cuda_device(self.index)
        out["TensorRT"] = import_tensorrt().__version__
        return out


def _fit(images: Any, lo: tuple[int, ...], hi: tuple[int, ...], pad_value: float) -> Any:
    """Pad (right / bottom: box coordinates unchanged) to the engine's smallest H x W; refuse larger."""
    import torch.nn.functional as F

    h, w = int(images.shape[-2]), int(images.shape[-1])
    if h > hi[-2] or w > hi[-1]:
        raise UserError(
            f"images of {h}x{w} do not fit the engine's input (at most {hi[-2]}x{hi[-1]}): rebuild with a larger --img"
        )
    th, tw = max(h, lo[-2]), max(w, lo[-1])
    if (th, tw) != (h, w):
        images = F.pad(images, (0, tw - w, 0, th - h), value=pad_value)
    return images


def tensorrt_predictor(
    engine_path: str | os.PathLike[str], device: int = 0, pad_value: float = PAD_VALUE
) -> Callable[[Any], Any]:
    """``predict(images (B, 3, H, W) in [0, 1])`` for the evaluator: a plain engine returns its
    (B, 4 + nc, A) output, an end-to-end engine a list of per-image (n, 6) detections
    ``x1, y1, x2, y2, conf, cls``. Batches beyond the profile's max are split; smaller images padded."""
    import torch

    runner = EngineRunner(engine_path, device)
    plain_out = "output0" if "output0" in runner.outputs else runner.outputs[0]

    def predict(images: Any) -> Any:
        x = _fit(torch.as_tensor(images).float(), runner.profile["min"], runner.profile["max"], pad_value)
        results = []
        for chunk in x.split(runner.max_batch):
            n = chunk.shape[0]
            if n < runner.min_batch:  # pad the batch up to the profile's minimum
                chunk = torch.cat((chunk, chunk[:1].expand(runner.min_batch - n, *chunk.shape[1:])))
            out = runner.infer(chunk)
            results.append({k: v[:n] for k, v in out.items()})
        if runner.end2end:
            from yolov9_qat.export.end2end import detections_from_outputs

            dets = []
            for r in results:
                dets.extend(detections_from_outputs(*(r[k] for k in END2END_OUTPUTS)))
            return [d.cpu() for d in dets]
        return torch.cat([r[plain_out] for r in results]).float()

    predict.runner = runner  # type: ignore[attr-defined]
    return predict
