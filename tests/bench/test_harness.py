"""The benchmark harness measures as trtexec does: host latency per inference, the runner's own device
timing beside it, throughput as queries per second of host wall time."""

from __future__ import annotations

import time

import pytest

from yolov9_qat.bench.harness import BenchConfig, measure

pytestmark = pytest.mark.cpu


def test_throughput_is_queries_per_second_of_wall_time() -> None:
    """A runner that idles between inferences (host work the device timing does not see): trtexec's
    throughput counts that time, one over the mean device latency would not."""
    calls = []

    def step() -> float:
        calls.append(1)
        time.sleep(0.004)  # 4 ms of host time per call ...
        return 1.0  # ... of which the "device" reports 1 ms

    r = measure(step, batch=2, config=BenchConfig(warmup_ms=0, duration_s=0.2, min_iterations=10))
    assert r.iterations == len(calls) - 1  # one untimed warm-up call
    assert r.extra["device_latency_ms"]["mean"] == pytest.approx(1.0)
    assert r.latency_ms["min"] >= 4.0  # host latency, not the device's 1 ms
    assert r.throughput_qps == pytest.approx(r.iterations / r.extra["wall_s"])
    assert r.throughput_qps < 1000 / 4.0  # far from the 1000 qps that 1 / device latency would claim
    assert r.ips == pytest.approx(2 * r.throughput_qps)
    assert "host" in r.extra["latency_basis"] and "wall" in r.extra["throughput_basis"]


def test_host_timed_runner_has_no_device_latency() -> None:
    r = measure(lambda: None, batch=1, config=BenchConfig(warmup_ms=0, duration_s=0.01, min_iterations=5))
    assert "device_latency_ms" not in r.extra and r.iterations >= 5
