"""The record as a pipeline of cached steps, per activation:

    synth -> train yolov9 -> reparameterize -> quantize (PTQ + QAT) -> export ONNX (float, Q/DQ,
    end-to-end) -> evaluate on ONNX Runtime -> benchmark

Every step is an artefact of :class:`~yolov9_qat.record.cache.Cache` (keyed by its parameters, its
inputs and the code it runs: the import closure of its :data:`STEP_ROOTS`), so ``reproduce`` resumes
after an interruption and the test suite's fixtures share the very same artefacts. A :class:`Profile`
holds every knob; ``cpu`` is the record ``reproduce`` writes, ``test`` a smaller one the CI suite
builds within its time budget. The rows the steps make come from :data:`yolov9_qat.record.rows.ROWS`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from yolov9_qat.errors import UserError
from yolov9_qat.models.activations import canonical_activation
from yolov9_qat.quant.options import QuantizeOptions
from yolov9_qat.record.cache import Cache
from yolov9_qat.record.rows import ROW, Row, run_parts, select
from yolov9_qat.utils.runs import torch_threads

log = logging.getLogger("yolov9_qat.record")

ACTIVATIONS: tuple[str, ...] = ("SiLU", "ReLU", "FReLU", "Mish", "AconC")
#: the CPU record's rows (:data:`yolov9_qat.record.rows.ROWS`): evaluated ones, benchmarks
EVAL_ROWS: tuple[Row, ...] = select("cpu", accuracy=True) + select("cpu", extra=True)
BENCH_ROWS: tuple[Row, ...] = select("cpu", bench=True)
#: ONNX graphs per activation (the kinds the rows run) and the QAT run each comes from: the converted
#: float model (None), the QAT model of each run (placement and recipe: :func:`~yolov9_qat.record.rows.
#: run_name`), ``*_e2e`` with NMS inside
RUN_OF: dict[str, str | None] = {r.onnx: r.run for r in (*EVAL_ROWS, *BENCH_ROWS) if r.onnx}
ONNX_KINDS: tuple[str, ...] = tuple(RUN_OF)
#: the QAT runs whose summaries hold the PyTorch rows (``trt`` first: it holds Origin and the control)
RUNS: tuple[str, ...] = tuple(dict.fromkeys(r.run for r in EVAL_ROWS if r.summary and r.run))
#: the ONNX graphs evaluated on ONNX Runtime (the others are only benchmarked)
EVAL_KINDS: frozenset[str] = frozenset(r.onnx for r in EVAL_ROWS if r.onnx)
#: every QAT run the record makes, longest first (measured: ``trt`` also runs the float control, ``ort``
#: quantizes more tensors); :meth:`Pipeline.build_parallel` starts them in this order
QAT_RUNS: tuple[str, ...] = ("trt", "ort", "trt_seed")
#: the cached steps each part of :meth:`Pipeline.build_part` builds (True: the float model's part)
PART_STEPS: dict[bool, frozenset[str]] = {
    True: frozenset({"train", "convert", "export", "ort_eval"}),
    False: frozenset({"quantize", "export", "ort_eval"}),
}
METRIC_KEYS = ("AP", "AP50", "precision", "recall")
#: the modules each step runs: their import closure keys the step's artefacts (:func:`code_version`)
STEP_ROOTS: dict[str, tuple[str, ...]] = {
    "synth": ("yolov9_qat.data.synth",),
    "train": ("yolov9_qat.train.trainer",),
    "convert": ("yolov9_qat.models.reparam", "yolov9_qat.models.checkpoint"),
    "quantize": ("yolov9_qat.quant.pipeline",),
    "export": ("yolov9_qat.export.onnx",),
    "ort_eval": ("yolov9_qat.eval.evaluator", "yolov9_qat.runtime.onnxruntime", "yolov9_qat.data.config"),
    "bench": ("yolov9_qat.bench.harness", "yolov9_qat.runtime.onnxruntime", "yolov9_qat.bench.device"),
}


#: the record's QAT: MSE calibration on 16 batches (the best QAT AP of max / percentile / mse / entropy
#: over the five activations: README), 2 epochs x 40 iterations of batch 10 at lr 1e-4, feature MSE
#: plus the detection loss (recipe ``det``)
RECORD_QUANT = replace(
    QuantizeOptions(), calib_method="mse", calib_batches=16, epochs=2, iters=40, lr=1e-4, batch_size=10,
    det_loss_weight=1.0,
)  # fmt: skip
#: what each QAT recipe (:data:`~yolov9_qat.record.rows.RECIPES`) changes in the profile's options:
#: ``seed`` is the published record's loss, feature MSE alone (everything else held equal)
RECIPE_OPTIONS: dict[str, dict[str, Any]] = {"det": {}, "seed": {"det_loss_weight": 0.0}}


@dataclass(frozen=True)
class Profile:
    """Everything that decides the record's numbers (part of every artefact's key)."""

    name: str
    # data: the embedded synthetic set
    synth_seed: int = 0
    n_train: int = 1500
    n_val: int = 300
    imgsz: int = 160
    # training (yolov9, dual head), then reparameterization onto gelan
    cfg: str = "yolov9-n"
    gelan_cfg: str = "gelan-n"
    epochs: int = 6
    batch_size: int = 16
    hyp: str = "hyp.cpu-adamw"
    optimizer: str = "AdamW"
    close_mosaic: int = 0
    seed: int = 0
    # quantization: the record's quantize options (hyp, image size, seed, device and the run folder come
    # from this profile and the pipeline at run time)
    quant: QuantizeOptions = field(default_factory=lambda: RECORD_QUANT)
    # export, evaluation, benchmark
    opset: int = 17
    val_batch: int = 32
    bench_batches: tuple[int, ...] = (1, 4, 8)
    bench_duration_s: float = 2.0
    bench_warmup_ms: float = 300.0
    threads: int = 0  # per process; 0: all cores (reproduce builds cores // threads activations at once)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def key(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d


PROFILES: dict[str, Profile] = {
    "cpu": Profile("cpu", threads=1),
    "test": Profile(
        "test", n_train=800, n_val=300, epochs=6, quant=replace(RECORD_QUANT, calib_batches=4, epochs=1, iters=30),
        bench_batches=(1, 4), bench_duration_s=0.5, bench_warmup_ms=100.0, threads=1,
    ),
}  # fmt: skip


def get_profile(name: str, **overrides: Any) -> Profile:
    if name not in PROFILES:
        raise UserError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return replace(PROFILES[name], **overrides) if overrides else PROFILES[name]


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    return {k: float(result[k]) for k in METRIC_KEYS}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str))


class Pipeline:
    """The steps of the record for one profile over one cache (see the module docstring)."""

    def __init__(
        self,
        profile: Profile,
        cache: Cache,
        workers: int = 2,
        progress: bool = True,
        echo: Callable[[str], None] | None = print,
    ) -> None:
        self.profile, self.cache, self.workers, self.progress = profile, cache, workers, progress
        self.echo = echo or (lambda _msg: None)
        self.threads = profile.threads or torch.get_num_threads()

    # --- helpers -------------------------------------------------------------------------------
    def _step(self, step: str, what: str, params: dict[str, Any], build: Callable[[Path], Any]) -> Path:
        """The artefact of ``step`` (code: the import closure of its :data:`STEP_ROOTS`)."""
        t0 = time.perf_counter()
        built = []

        def run(tmp: Path) -> None:
            self.echo(f"  {what} ...")
            built.append(True)
            build(tmp)

        with torch_threads(self.threads):
            out = self.cache.get(step, {"profile": self.profile.key(), **params}, run, STEP_ROOTS[step])
        if built:
            self.echo(f"  {what}: {time.perf_counter() - t0:.0f} s")
        return out

    # --- steps -----------------------------------------------------------------------------------
    def data(self) -> Path:
        """The synthetic data set; returns its ``data.yaml``."""
        from yolov9_qat.data.synth import generate

        p = self.profile

        def build(tmp: Path) -> None:
            import yaml

            data_yaml = generate(
                tmp / "synth",
                seed=p.synth_seed,
                n_train=p.n_train,
                n_val=p.n_val,
                imgsz=p.imgsz,
                progress=False,
            )
            d = yaml.safe_load(data_yaml.read_text())
            d["path"] = "."  # relative to data.yaml: the folder is renamed into the cache after the build
            data_yaml.write_text(yaml.safe_dump(d, sort_keys=False))

        return self._step("synth", "synthetic data set", {}, build) / "synth" / "data.yaml"

    def trained(self, act: str) -> Path:
        """The yolov9 model trained with activation ``act``: its final epoch (``--noval``: only that
        epoch is evaluated, so no weights are chosen by a score on the val images the record reports)."""
        from yolov9_qat.train.trainer import Trainer, TrainOptions

        p, data = self.profile, self.data()

        def build(tmp: Path) -> None:
            opt = TrainOptions(
                data=str(data), cfg=p.cfg, activation=act, epochs=p.epochs, batch_size=p.batch_size, img=p.imgsz,
                hyp=p.hyp, device="cpu", workers=self.workers, project=str(tmp), name="run", exist_ok=True,
                close_mosaic=p.close_mosaic, seed=p.seed, optimizer=p.optimizer, progress=self.progress, noplots=True,
                noval=True,
            )  # fmt: skip
            summary = Trainer(opt).run()
            shutil.copy2(summary["weights"], tmp / "best.pt")
            _write_json(tmp / "train.json", summary)

        return (
            self._step("train", f"{act}: train {p.cfg} ({p.epochs} epochs)", {"act": act}, build) / "best.pt"
        )

    def converted(self, act: str) -> Path:
        """The reparameterized (gelan) float checkpoint."""
        from yolov9_qat.models.checkpoint import load, save
        from yolov9_qat.models.reparam import reparameterize

        src = self.trained(act)

        def build(tmp: Path) -> None:
            model = reparameterize(load(src).model, self.profile.gelan_cfg)
            save(
                model,
                tmp / "converted.pt",
                meta={"reparameterized_from": self.profile.cfg, "activation": act},
            )

        key = {"act": act, "from": src.parent.name}
        return self._step("convert", f"{act}: reparameterize", key, build) / "converted.pt"

    def quantize_options(self, run: str, project: Path) -> QuantizeOptions:
        """The options of the record's ``quantize`` run ``run`` (``trt``, ``ort``, ``trt_seed``: placement
        and recipe) into ``project/run``. Only ``trt`` evaluates Origin and PTQ and runs the float control:
        the seed recipe's PTQ is ``trt``'s (same placement, calibration and seed) and the ``ort`` PTQ is no
        row of the record, so neither is evaluated."""
        p = self.profile
        placement, recipe = run_parts(run)
        return replace(
            p.quant, hyp=p.hyp, img=p.imgsz, seed=p.seed, device="cpu", project=str(project), name="run",
            exist_ok=True, workers=self.workers, progress=self.progress, placement=placement,
            eval_origin=run == "trt", float_control=run == "trt", eval_ptq=run == "trt",
            **RECIPE_OPTIONS[recipe],
        )  # fmt: skip

    def quantized(self, act: str, run: str = "trt") -> Path:
        """The folder of QAT run ``run``: ``qat.pt`` (best QAT checkpoint) and ``summary.json`` (PTQ,
        QAT; for ``trt`` also Origin and Origin fine-tuned: the float control with the QAT run's
        schedule, quantizers off).

        ``ort``: the ONNX Runtime placement; ``trt_seed``: TensorRT's placement with the published
        record's recipe (feature MSE alone, whose control is Origin itself).
        """
        from yolov9_qat.quant.pipeline import quantize

        p, data, src = self.profile, self.data(), self.converted(act)

        def build(tmp: Path) -> None:
            summary = quantize(src, data, self.quantize_options(run, tmp))
            shutil.copy2(summary["weights_out"]["qat_best"], tmp / "qat.pt")
            _write_json(tmp / "summary.json", summary)

        key: dict[str, Any] = {"act": act, "from": src.parent.name}
        if run != "trt":
            key["run"] = run
        what = f"{act}: PTQ + QAT ({p.quant.epochs} x {p.quant.iters} it{', ' + run if run != 'trt' else ''})"
        return self._step("quantize", what, key, build)

    def onnx(self, act: str, kind: str) -> Path:
        """ONNX file ``kind`` (:data:`ONNX_KINDS`) of activation ``act``."""
        if kind not in ONNX_KINDS:
            raise ValueError(f"kind must be one of {ONNX_KINDS}")
        run = RUN_OF[kind]
        src = self.converted(act) if run is None else self.quantized(act, run) / "qat.pt"
        e2e = "onnx" if kind.endswith("_e2e") else None

        def build(tmp: Path) -> None:
            self.export_file(src, tmp / "model.onnx", e2e)

        key = {"act": act, "kind": kind, "from": src.parent.name}
        return self._step("export", f"{act}: export {kind} ONNX", key, build) / "model.onnx"

    def export_file(self, weights: Path, out: Path, end2end: str | None = None) -> Path:
        """The record's export of a checkpoint (dynamic batch, simplified, the evaluator's NMS settings
        for end-to-end graphs, so the AP is the same)."""
        from yolov9_qat.export.onnx import ExportOptions, export_onnx, load_for_export

        p = self.profile
        model, info = load_for_export(weights)
        opts = ExportOptions(
            imgsz=p.imgsz, dynamic=True, simplify=True, opset=p.opset, end2end=end2end,
            iou_thres=0.7, conf_thres=0.001, max_det=300,
        )  # fmt: skip
        return export_onnx(model, out, opts, precision=info["precision"])

    def evaluate_onnx(self, onnx: Path) -> dict[str, Any]:
        """The record's ONNX Runtime evaluation of a graph (rewrite ``auto``, as deployed)."""
        from yolov9_qat.data.config import load_data_yaml
        from yolov9_qat.eval.evaluator import Evaluator
        from yolov9_qat.runtime.onnxruntime import OrtModel

        evaluator = Evaluator.for_data(
            load_data_yaml(self.data()), self.profile.imgsz, batch_size=self.profile.val_batch, workers=0
        )
        model = OrtModel(onnx, threads=self.threads)
        return {**evaluator.run(model, progress=False), "runtime": model.describe()}

    def ort_metrics(self, act: str, kind: str) -> dict[str, Any]:
        """AP, AP50, precision, recall of ONNX graph ``kind`` on ONNX Runtime (rewrite ``auto``, as deployed)."""
        src = self.onnx(act, kind)

        def build(tmp: Path) -> None:
            _write_json(tmp / "metrics.json", self.evaluate_onnx(src))

        key = {"act": act, "kind": kind, "from": src.parent.name}
        out = self._step("ort_eval", f"{act}: evaluate {kind} on ONNX Runtime", key, build)
        return json.loads((out / "metrics.json").read_text())

    def bench_all(self, act: str) -> dict[str, dict[str, Any]]:
        """Every benchmark row of one activation on ONNX Runtime, measured side by side (interleaved
        turns: :func:`~yolov9_qat.bench.harness.run_side_by_side`), so the INT8 / FP32 ratios hold while
        another process (a second test worker) loads the machine; one report per row."""
        from yolov9_qat.bench.device import cpu_model
        from yolov9_qat.bench.harness import BenchConfig, run_side_by_side
        from yolov9_qat.runtime.onnxruntime import OrtModel, OrtRunner

        p = self.profile
        srcs = {r.name: self.onnx(act, r.onnx) for r in BENCH_ROWS if r.onnx and r.rewrite}

        def build(tmp: Path) -> None:
            runners = {
                k: OrtRunner(OrtModel(src, threads=self.threads, rewrite=ROW[k].rewrite), imgsz=p.imgsz)
                for k, src in srcs.items()
            }
            config = BenchConfig(warmup_ms=p.bench_warmup_ms, duration_s=p.bench_duration_s)
            reports = run_side_by_side(runners, p.bench_batches, config, model=act, progress=False)
            _write_json(tmp / "bench.json", reports)

        key = {
            "act": act,
            "from": {k: src.parent.name for k, src in srcs.items()},
            "machine": cpu_model(),
            "threads": self.threads,
        }
        kinds = ", ".join(srcs)
        out = self._step("bench", f"{act}: benchmark {kinds} side by side on ONNX Runtime", key, build)
        return json.loads((out / "bench.json").read_text())

    # --- the record ------------------------------------------------------------------------------
    def _summary(self, act: str, run: str = "trt") -> dict[str, Any]:
        """The ``summary.json`` of QAT run ``run``."""
        return json.loads((self.quantized(act, run) / "summary.json").read_text())

    def activation_record(self, act: str, bench: bool = True) -> dict[str, Any]:
        """Everything the record says about one activation (accuracy rows, latency rows, extras)."""
        summaries = {run: self._summary(act, run) for run in RUNS}
        figures: dict[str, dict[str, float]] = {}
        for row in EVAL_ROWS:
            if row.onnx is not None:
                figures[row.name] = _metrics(self.ort_metrics(act, row.onnx))
            else:
                assert row.run is not None and row.summary is not None
                figures[row.name] = _metrics(summaries[row.run].get(row.summary) or {})
        latency: dict[str, Any] = {}
        raw: dict[str, Any] = {}
        if bench:
            reports = self.bench_all(act)
            for row in BENCH_ROWS:
                kind = row.name
                report = reports[kind]
                raw[kind] = report
                if row.latency:
                    latency[kind] = {
                        str(r["batch"]): {"p99_ms": r["latency_ms"]["p99"], "qps": r["throughput_qps"], "ips": r["ips"],
                                          "median_ms": r["latency_ms"]["median"]}
                        for r in report["results"]
                    }  # fmt: skip
        return {
            "accuracy": {r.name: figures[r.name] for r in EVAL_ROWS if r.accuracy},
            "latency": latency,
            **{r.name: figures[r.name] for r in EVAL_ROWS if r.extra},
            "bench": raw,
            "qat": summaries["trt"] if "trt" in summaries else self._summary(act),
        }

    def build_part(self, act: str, run: str | None) -> None:
        """One part of an activation's artefacts, the unit :meth:`build_parallel` schedules: ``run``
        None: the trained and reparameterized float model; a QAT run (:data:`QAT_RUNS`): that run.
        Then the ONNX graphs made from it (:data:`RUN_OF`), evaluated on ONNX Runtime where a row is."""
        if run is None:
            self.converted(act)
        else:
            self.quantized(act, run)
        for kind in (k for k, r in RUN_OF.items() if r == run):
            if kind in EVAL_KINDS:
                self.ort_metrics(act, kind)
            else:
                self.onnx(act, kind)

    def build_parallel(self, acts: Sequence[str], jobs: int) -> None:
        """Every artefact of ``acts`` except the benchmarks, in ``jobs`` processes, each on
        :attr:`threads` threads (so the record's figures do not depend on ``jobs``).

        The work is split into parts (:meth:`build_part`: one float model, or one QAT run of it) and
        scheduled as they become ready: the float models first (each QAT run waits for its own), then
        the QAT runs, longest first, so no core idles while one activation finishes alone. The shared
        synthetic set is built first, here; each step asked to be rebuilt is rebuilt once (by the part
        that owns it: :data:`PART_STEPS`), and the benchmarks are left to the caller, who runs them
        alone."""
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

        from tqdm import tqdm

        self.data()  # once, before the workers share it
        rebuild = set(STEP_ROOTS) if "all" in self.cache.rebuild else set(self.cache.rebuild)
        rebuild -= {"synth", "bench"}
        # float models before QAT runs, activations in order, the longest QAT run of each first
        todo: list[tuple[str, str | None]] = [(a, None) for a in acts] + [
            (a, r) for r in QAT_RUNS for a in acts
        ]
        floats_done: set[str] = set()
        running: dict[Future[float], tuple[str, str | None]] = {}
        self.echo(f"building {len(acts)} activations in {jobs} processes, {self.threads} thread(s) each")
        ctx = mp.get_context("spawn")  # a clean interpreter: no forked torch thread pools or locks
        bar = tqdm(total=len(todo), desc="parts built", unit="part", disable=not self.progress)
        with ProcessPoolExecutor(jobs, mp_context=ctx) as pool, bar:

            def submit_ready() -> None:
                while len(running) < jobs:
                    ready = next((p for p in todo if p[1] is None or p[0] in floats_done), None)
                    if ready is None:
                        return
                    todo.remove(ready)
                    owned = sorted(rebuild & PART_STEPS[ready[1] is None])
                    fut = pool.submit(
                        _build_part, self.profile, str(self.cache.root), owned, self.workers, *ready
                    )
                    running[fut] = ready

            submit_ready()
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    act, run = running.pop(fut)
                    seconds = fut.result()
                    self.echo(f"  {act} {run or 'float'}: built in {seconds:.0f} s")
                    bar.update()
                    if run is None:
                        floats_done.add(act)
                submit_ready()
        self.cache.rebuild &= {"bench", "all"}
        if "all" in self.cache.rebuild:
            self.cache.rebuild = {"bench"}

    def run(
        self, activations: Iterable[str] = ACTIVATIONS, bench: bool = True, jobs: int = 1
    ) -> dict[str, Any]:
        """The whole record; returns the dict ``record.json`` holds (baseline schema + extras).

        ``jobs > 1`` builds the activations' artefacts in that many processes first
        (:meth:`build_parallel`); the benchmarks then run here, one graph at a time, alone."""
        from yolov9_qat.bench.device import cpu_device

        acts = [canonical_activation(a) for a in activations]
        if jobs > 1 and len(acts) > 1:
            self.build_parallel(acts, min(jobs, len(acts)))
        per_act = {}
        for i, act in enumerate(acts, 1):
            self.echo(f"[{i}/{len(acts)}] {act}")
            per_act[act] = self.activation_record(act, bench=bench)
        dev = cpu_device(self.threads)
        record = {
            "source": f"yolov9-qat reproduce --profile {self.profile.name}",
            "device": {"name": dev["Device"], "threads": self.threads, "vnni": dev["VNNI"]},
            "comparison": {"a": "int8_onnxruntime", "b": "origin_pytorch"},
            "accuracy": {a: r["accuracy"] for a, r in per_act.items()},
            "latency": {a: r["latency"] for a, r in per_act.items() if r["latency"]},
            "extras": {
                a: {
                    **{row.name: r[row.name] for row in EVAL_ROWS if row.extra},
                    "bench": r["bench"],
                    "qat_epochs": r["qat"].get("epochs"),
                    "calibration": r["qat"].get("calibration"),
                }
                for a, r in per_act.items()
            },
            "profile": self.profile.key(),
        }
        return record


def _build_part(
    profile: Profile, cache_root: str, rebuild: list[str], workers: int, act: str, run: str | None
) -> float:
    """:meth:`Pipeline.build_parallel`'s work in one process: :meth:`Pipeline.build_part`, its lines
    prefixed with the activation's name (no progress bars: they would interleave)."""
    t0 = time.perf_counter()
    pipe = Pipeline(
        profile,
        Cache(cache_root, rebuild),
        workers,
        progress=False,
        echo=lambda m: print(f"[{act}] {m}", flush=True),
    )
    pipe.build_part(act, run)
    return time.perf_counter() - t0
