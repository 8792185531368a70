"""The record's rows, one table: what each row is, where its figures come from and how it is printed.

A row is an evaluation row (``accuracy``: AP, AP50, precision, recall; named ``<model>_<backend>``), a
latency row (``latency``: p99 ms, qps, images/s per batch; named by precision), a benchmark the CPU
record runs on ONNX Runtime (``bench``) or evaluated figures kept beside the tables (``extra``). The
CPU pipeline (:mod:`yolov9_qat.record.pipeline`), the GPU record (:mod:`yolov9_qat.record.gpu`), the
tables (:mod:`yolov9_qat.record.tables`), the report (:mod:`yolov9_qat.record.report`), baseline
validation (:mod:`yolov9_qat.record.baseline`) and the tests iterate over :data:`ROWS`; adding a row
is one entry here. The order of :data:`ROWS` is the order of the record's tables.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the records that make rows: ``reproduce --profile cpu|test`` (ONNX Runtime) and ``--profile gpu``
RECORDS: tuple[str, ...] = ("cpu", "gpu")
#: the QAT recipes: ``det`` (ours: feature MSE against the float model plus the detection loss) and
#: ``seed`` (the published record's tool: feature MSE alone, no labels). Everything else of a run (data
#: order, schedule, calibration, selection rule) is the record's own, so the two differ in the loss alone.
RECIPES: tuple[str, ...] = ("det", "seed")


def run_name(placement: str, recipe: str = "det") -> str:
    """The name of a QAT run of the record: ``trt``, ``ort``, ``trt_seed`` ..."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown QAT recipe {recipe!r}; known: {RECIPES}")
    return placement if recipe == "det" else f"{placement}_{recipe}"


def run_parts(run: str) -> tuple[str, str]:
    """``(placement, recipe)`` of a run name (the inverse of :func:`run_name`)."""
    placement, _, recipe = run.partition("_")
    return placement, recipe or "det"


@dataclass(frozen=True)
class Row:
    """One row of the record (see the module docstring)."""

    #: the key in ``record.json`` and in baselines: ``origin_pytorch``, ``int8_onnxruntime``, ``fp32`` ...
    name: str
    #: the words the tables print (evaluation tables, latency table, report section or column)
    label: str
    #: the records that make the row (:data:`RECORDS`)
    records: tuple[str, ...]
    #: an evaluation row: AP / AP50 / precision / recall in the record's ``accuracy`` section
    accuracy: bool = False
    #: a latency row: p99 / qps / ips per batch in the record's ``latency`` section
    latency: bool = False
    #: benchmarked on ONNX Runtime by the CPU record (raw report in ``extras.bench``; report's table)
    bench: bool = False
    #: evaluated, its figures kept in the record's ``extras`` (a report section of its own: ``label``)
    extra: bool = False
    #: the ONNX graph the row runs: a kind of :meth:`~yolov9_qat.record.pipeline.Pipeline.onnx` (CPU
    #: record; ``*_e2e``: NMS inside), the ``<onnx>.onnx`` file of the GPU record's models; None: PyTorch
    onnx: str | None = None
    #: the QAT placement (``quantize --placement``) of the run behind the row: its ONNX graph, or the QAT
    #: summary its PyTorch figures come from; None: the converted float model
    placement: str | None = None
    #: the entry of that run's QAT summary holding the row's PyTorch figures (``origin``, ``best`` ...)
    summary: str | None = None
    #: the QAT recipe of that run (:data:`RECIPES`)
    recipe: str = "det"
    #: the ONNX Runtime rewrite the benchmark runs (``none``, ``auto``; see runtime/onnxruntime.py)
    rewrite: str | None = None
    #: the TensorRT precision of the row's engine (GPU record)
    precision: str | None = None
    #: the report's column words for a benchmark row ('' : ``label``)
    bench_label: str = ""
    #: the report's "<ratio> / FP32" column words: a benchmark row compared with the float graph's
    ratio: str = ""
    #: the row's words without the backend, for the report's comparisons and plots ('' : ``label``
    #: up to " (")
    short: str = ""

    @property
    def column(self) -> str:
        """The report's column words of a benchmark row."""
        return self.bench_label or self.label

    @property
    def run(self) -> str | None:
        """The QAT run behind the row (:func:`run_name`); None: the converted float model."""
        return None if self.placement is None else run_name(self.placement, self.recipe)

    @property
    def words(self) -> str:
        """The row's words without the backend (``Origin``, ``Origin fine-tuned``, ``QAT`` ...)."""
        return self.short or self.label.partition(" (")[0]


CPU, GPU, BOTH = ("cpu",), ("gpu",), ("cpu", "gpu")

# fmt: off
ROWS: tuple[Row, ...] = (
    # evaluation rows: PyTorch figures from the QAT runs' summaries, ONNX Runtime / TensorRT from graphs
    Row("origin_pytorch", "Origin (Pytorch)", BOTH, accuracy=True, placement="trt", summary="origin"),
    # the float control: Origin fine-tuned with the QAT run's exact schedule, quantizers off
    Row("origin_ft_pytorch", "Origin fine-tuned (Pytorch)", CPU, accuracy=True, placement="trt",
        summary="origin_ft"),
    Row("ptq_pytorch", "PTQ (Pytorch)", CPU, accuracy=True, placement="trt", summary="ptq"),
    Row("int8_pytorch", "INT8 (Pytorch)", BOTH, accuracy=True, placement="trt", summary="best", short="QAT"),
    Row("origin_onnxruntime", "Origin (ONNX Runtime)", CPU, accuracy=True, onnx="fp32"),
    Row("int8_onnxruntime", "INT8 (ONNX Runtime)", CPU, accuracy=True, onnx="int8", placement="trt"),
    # the published record's recipe (feature MSE alone): its float control is Origin itself
    Row("qat_pytorch", "INT8 seed recipe (Pytorch)", CPU, accuracy=True, placement="trt", recipe="seed",
        summary="best", short="QAT seed recipe"),
    Row("qat_onnxruntime", "INT8 seed recipe (ONNX Runtime)", CPU, accuracy=True, onnx="int8seed",
        placement="trt", recipe="seed"),
    # the QAT model of the ``ort`` placement (quantize --placement ort: every op's output quantized)
    Row("int8ort_pytorch", "INT8 ort placement (Pytorch)", CPU, accuracy=True, placement="ort",
        summary="best"),
    Row("int8ort_onnxruntime", "INT8 ort placement (ONNX Runtime)", CPU, accuracy=True, onnx="int8ort",
        placement="ort"),
    Row("int8_tensorrt", "INT8 (TensorRT)", GPU, accuracy=True, onnx="int8", placement="trt",
        precision="int8"),
    # the QAT model with NMS inside the graph, on ONNX Runtime
    Row("int8_end2end_onnxruntime", "End-to-end graph (NMS inside, ONNX Runtime)", CPU, extra=True,
        onnx="int8_e2e", placement="trt"),
    # latency rows and ONNX Runtime benchmarks (the report's columns in this order)
    Row("fp32", "FP32", CPU, latency=True, bench=True, onnx="fp32", rewrite="none"),
    # the Q/DQ graph as exported (TensorRT's form); benchmarked, not a latency row of the record
    Row("int8_qdq", "INT8 Q/DQ as exported", CPU, bench=True, onnx="int8", placement="trt", rewrite="none"),
    # TensorRT's placement: on the CPU its deployable form, exact integer convs on VNNI CPUs
    Row("int8", "INT8", BOTH, latency=True, bench=True, onnx="int8", placement="trt", rewrite="auto",
        precision="int8", bench_label="INT8 integer rewrite", ratio="rewrite"),
    # the ort placement: QLinear ops end to end on VNNI CPUs
    Row("int8ort", "INT8 ort placement", CPU, latency=True, bench=True, onnx="int8ort", placement="ort",
        rewrite="auto", ratio="ort placement"),
    # TensorRT precisions of the GPU record: FP16 runs the float (Origin) graph, MP the Q/DQ graph
    Row("fp16", "FP16", GPU, latency=True, onnx="fp32", precision="fp16"),
    Row("mp", "MP", GPU, latency=True, onnx="int8", placement="trt", precision="mp"),
)
# fmt: on

#: the rows by name
ROW: dict[str, Row] = {r.name: r for r in ROWS}


def select(
    record: str | None = None,
    *,
    accuracy: bool | None = None,
    latency: bool | None = None,
    bench: bool | None = None,
    extra: bool | None = None,
) -> tuple[Row, ...]:
    """The rows of ``record`` (None: every record) with the given flags, in table order."""
    want = {"accuracy": accuracy, "latency": latency, "bench": bench, "extra": extra}
    return tuple(
        r
        for r in ROWS
        if (record is None or record in r.records)
        and all(v is None or getattr(r, k) is v for k, v in want.items())
    )


def names(rows: tuple[Row, ...]) -> tuple[str, ...]:
    """The rows' names."""
    return tuple(r.name for r in rows)


def float_bench() -> Row:
    """The benchmark of the float graph: the reference of the report's ratio columns."""
    (ref,) = (r for r in select("cpu", bench=True) if r.placement is None)
    return ref


def _check(rows: tuple[Row, ...]) -> None:
    """The table's invariants (checked on import): unique names, known records, one QAT run (placement and
    recipe) per ONNX kind, a source for every evaluated row, what benchmarks and GPU rows need."""
    if len({r.name for r in rows}) != len(rows):
        raise ValueError("record rows: duplicate names")
    runs: dict[str, str | None] = {}
    for r in rows:
        where = f"record row {r.name!r}"
        if not r.records or set(r.records) - set(RECORDS):
            raise ValueError(f"{where}: records must be among {RECORDS}")
        if r.recipe not in RECIPES:
            raise ValueError(f"{where}: recipe must be among {RECIPES}")
        if r.onnx is not None and runs.setdefault(r.onnx, r.run) != r.run:
            raise ValueError(f"{where}: ONNX {r.onnx!r} comes from the QAT run {runs[r.onnx]!r} elsewhere")
        if (r.accuracy or r.extra) and (r.summary is None) == (r.onnx is None):
            raise ValueError(f"{where}: an evaluated row needs a QAT summary entry or an ONNX graph")
        if r.summary is not None and r.placement is None:
            raise ValueError(f"{where}: figures from a QAT summary need the run's placement")
        if r.bench and (r.onnx is None or r.rewrite is None or "cpu" not in r.records):
            raise ValueError(f"{where}: a benchmark needs an ONNX graph and a rewrite (CPU record)")
        if "gpu" in r.records and r.latency and (r.onnx is None or r.precision is None):
            raise ValueError(f"{where}: a GPU latency row needs an ONNX graph and a TensorRT precision")


_check(ROWS)
