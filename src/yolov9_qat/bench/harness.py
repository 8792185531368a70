"""The benchmark loop, trtexec's method: a time-based warm-up, then inferences for a fixed duration,
each timed on its own; statistics per batch size; JSON and the record's Markdown table.

A backend plugs in as a :class:`Runner`: ``prepare(batch)`` returns a function that runs one
inference of that batch to completion and returns its latency in milliseconds when it measured it
itself on the device (TensorRT: CUDA events around the enqueue) or ``None``.

The figures are trtexec's: ``latency_ms`` is host latency (``time.perf_counter`` around each inference,
what trtexec's "Latency" is), ``device_latency_ms`` the runner's own device timing when it has one (what
trtexec reports as GPU compute time), and ``throughput_qps`` queries per second of host wall time over the
measured run (trtexec's "Throughput"), not one over the mean latency. Models that are compared are
measured with :func:`run_side_by_side` (interleaved turns), so a ratio of theirs holds on a busy machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

Step = Callable[[], "float | None"]
PERCENTILES = (90, 95, 99)


@dataclass
class BenchConfig:
    """How long to warm up and to measure, per batch size (trtexec: ``--warmUp=500 --duration=10``)."""

    warmup_ms: float = 500.0
    duration_s: float = 10.0
    min_iterations: int = 10
    max_iterations: int | None = None

    def __post_init__(self) -> None:
        if self.warmup_ms < 0 or self.duration_s <= 0 or self.min_iterations < 1:
            raise ValueError("warm-up must be >= 0, duration > 0 and min_iterations >= 1")


class Runner(Protocol):
    """What a backend gives the harness."""

    backend: str

    def prepare(self, batch: int) -> Step: ...

    def device(self) -> dict[str, Any]: ...


@dataclass
class BatchResult:
    batch: int
    iterations: int
    latency_ms: dict[str, float]
    throughput_qps: float
    ips: float
    extra: dict[str, Any] = field(default_factory=dict)


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float]:
    """``min``, ``mean``, ``median``, ``p90``, ``p95``, ``p99``, ``max`` (percentiles as trtexec reports
    them: the value below which that share of the samples lies, nearest rank)."""
    a = np.sort(np.asarray(latencies_ms, dtype=np.float64))
    if a.size == 0:
        raise ValueError("no latencies")

    def rank(p: float) -> float:  # nearest-rank percentile
        return float(a[max(0, min(a.size - 1, math.ceil(p / 100 * a.size) - 1))])

    out = {"min": float(a[0]), "mean": float(a.mean()), "median": float(np.median(a))}
    out.update({f"p{p}": rank(p) for p in PERCENTILES})
    out["max"] = float(a[-1])
    return out


def _warm_up(step: Step, warmup_ms: float) -> None:
    t_end = time.perf_counter() + warmup_ms / 1e3
    step()  # at least one warm-up call (first-run allocations, lazy initialisation)
    while time.perf_counter() < t_end:
        step()


@dataclass
class _Samples:
    """The timed calls of one runner at one batch size (pooled over its turns when interleaved)."""

    latencies: list[float] = field(default_factory=list)
    device: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def run(self, step: Step, duration_s: float, min_iterations: int, max_iterations: int | None) -> None:
        """Call ``step`` until ``duration_s`` has passed (and at least ``min_iterations`` times)."""
        n0 = len(self.latencies)
        t0 = time.perf_counter()
        t_end = t0 + duration_s
        while True:
            s = time.perf_counter()
            measured = step()
            self.latencies.append(1e3 * (time.perf_counter() - s))
            if measured is not None:
                self.device.append(float(measured))
            n = len(self.latencies) - n0
            if max_iterations is not None and n >= max_iterations:
                break
            if n >= min_iterations and time.perf_counter() >= t_end:
                break
        self.wall_s += time.perf_counter() - t0

    def result(self, batch: int, **extra: Any) -> BatchResult:
        qps = len(self.latencies) / max(self.wall_s, 1e-12)  # trtexec's throughput: per host wall second
        info: dict[str, Any] = {
            "wall_s": self.wall_s,
            "latency_basis": "host: perf_counter around each inference (trtexec's Latency)",
            "throughput_basis": "queries per second of host wall time over the measured run (trtexec's Throughput)",
            **extra,
        }
        if self.device:
            info["device_latency_ms"] = latency_stats(self.device)  # trtexec's GPU Compute Time
        return BatchResult(
            batch=batch,
            iterations=len(self.latencies),
            latency_ms=latency_stats(self.latencies),
            throughput_qps=qps,
            ips=qps * batch,
            extra=info,
        )


def measure(step: Step, batch: int, config: BenchConfig) -> BatchResult:
    """Warm up for ``config.warmup_ms``, then call ``step`` until ``config.duration_s`` has passed
    (and at least ``min_iterations`` times)."""
    _warm_up(step, config.warmup_ms)
    samples = _Samples()
    samples.run(step, config.duration_s, config.min_iterations, config.max_iterations)
    return samples.result(batch)


def run_benchmark(
    runner: Runner,
    batches: Iterable[int],
    config: BenchConfig | None = None,
    model: str = "",
    precision: str = "",
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure every batch size; the JSON layout of ``bench`` (one entry per batch size).
    ``on_result(row)`` may add to each batch's entry (its ``extra``) once it is measured."""
    config = config or BenchConfig()
    batches = list(batches)
    results = []
    for b in tqdm(batches, desc=f"bench {runner.backend}", disable=not progress, leave=False):
        results.append(asdict(measure(runner.prepare(b), b, config)))
        if on_result is not None:
            on_result(results[-1])
    return _report(runner, model, precision, asdict(config), results)


def _report(
    runner: Runner, model: str, precision: str, config: dict[str, Any], results: list[dict[str, Any]]
) -> dict[str, Any]:
    """The JSON layout of one benchmarked model (``bench``'s output)."""
    return {
        "backend": runner.backend,
        "model": model,
        "precision": precision,
        "device": runner.device(),
        "config": config,
        "results": results,
    }


def run_side_by_side(
    runners: Mapping[str, Runner],
    batches: Iterable[int],
    config: BenchConfig | None = None,
    rounds: int = 5,
    model: str = "",
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Benchmark several runners at every batch size, interleaved: each is warmed up, then ``rounds``
    turns in which every runner runs for ``duration_s / rounds`` (the order reversed every other turn);
    each one's latencies and wall time are pooled over its turns. A change in the machine's load (another
    process starting or stopping) then hits all of them alike, so their ratios hold where runs one after
    the other do not. Returns one :func:`run_benchmark` report per key (the key is its ``precision``)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not runners:
        raise ValueError("no runners to benchmark")
    config = config or BenchConfig()
    batches = list(batches)
    names = list(runners)
    turn_s = config.duration_s / rounds
    turn_min = math.ceil(config.min_iterations / rounds)
    turn_max = None if config.max_iterations is None else math.ceil(config.max_iterations / rounds)
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
    for b in tqdm(batches, desc="bench side by side", disable=not progress, leave=False):
        steps = {k: runners[k].prepare(b) for k in names}
        for k in names:
            _warm_up(steps[k], config.warmup_ms)
        samples = {k: _Samples() for k in names}
        for r in range(rounds):
            for k in names if r % 2 == 0 else reversed(names):
                samples[k].run(steps[k], turn_s, turn_min, turn_max)
        for k in names:
            extra = {"side_by_side": {"with": [n for n in names if n != k], "rounds": rounds}}
            results[k].append(asdict(samples[k].result(b, **extra)))
    return {k: _report(runners[k], model, k, {**asdict(config), "rounds": rounds}, results[k]) for k in names}


def parse_batches(text: str | Sequence[int]) -> list[int]:
    """``"1,4,8"`` -> ``[1, 4, 8]`` (positive, in the given order, no duplicates)."""
    items = [int(x) for x in text.split(",") if x.strip()] if isinstance(text, str) else list(text)
    if not items or any(b < 1 for b in items) or len(set(items)) != len(items):
        raise ValueError(f"batch sizes must be distinct positive integers, got {text!r}")
    return items


def markdown_table(reports: Sequence[dict[str, Any]]) -> str:
    """The record's "Latency/Throughput" layout for one or more benchmark reports."""
    lines = [
        "| Model Name | Batch Size | Latency (99%) | Throughput (qps) | Total Inferences (IPS) |",
        "|---|---|---|---|---|",
    ]
    for rep in reports:
        label = rep.get("label") or f"{rep.get('precision', '').upper()} ({rep.get('model', '')})"
        for i, r in enumerate(rep["results"]):
            name = label if i == 0 else ""
            lines.append(
                f"| {name} | {r.get('label', r['batch'])} | {r['latency_ms']['p99']:.2f} ms "
                f"| {r['throughput_qps']:.0f} | {r['ips']:.0f} |"
            )
    return "\n".join(lines)


def device_table(device: dict[str, Any]) -> str:
    """The record's device block as a two-column Markdown table."""
    lines = ["| Device | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in device.items()]
    return "\n".join(lines)
