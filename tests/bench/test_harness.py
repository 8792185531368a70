"""The benchmark harness measures as trtexec does: host latency per inference, the runner's own device
timing beside it, throughput as queries per second of host wall time."""

from __future__ import annotations

import time

import pytest

from yolov9_qat.bench.harness import BenchConfig, measure, run_side_by_side

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


class _SleepRunner:
    """A runner whose inference sleeps ``ms`` times the shared ``load`` factor; it logs its calls."""

    backend = "sleep"

    def __init__(self, name: str, ms: float, load: list[float], log: list[str]) -> None:
        self.name, self.ms, self.load, self.log = name, ms, load, log

    def prepare(self, batch: int):
        def step() -> None:
            self.log.append(self.name)
            time.sleep(self.ms * self.load[0] / 1e3)

        return step

    def device(self) -> dict:
        return {"name": "sleep"}


def test_side_by_side_interleaves_turns_and_pools_them() -> None:
    log: list[str] = []
    load = [1.0]
    runners = {k: _SleepRunner(k, ms, load, log) for k, ms in (("slow", 2.0), ("fast", 1.0))}
    config = BenchConfig(warmup_ms=0, duration_s=0.1, min_iterations=10)
    reports = run_side_by_side(runners, [1, 2], config, rounds=4, model="m", progress=False)
    assert set(reports) == {"slow", "fast"}
    for k, rep in reports.items():
        assert rep["precision"] == k and rep["model"] == "m" and rep["config"]["rounds"] == 4
        assert [r["batch"] for r in rep["results"]] == [1, 2]
        for r in rep["results"]:
            assert r["iterations"] >= 10
            assert r["extra"]["side_by_side"] == {"with": [n for n in runners if n != k], "rounds": 4}
    # per batch size: each warmed up, then 4 turns, the order reversed every other turn
    per_batch = ["slow", "fast"] + ["slow", "fast", "fast", "slow"] * 2

    def runs(names: list[str]) -> list[str]:  # consecutive calls of one runner as one entry
        return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]

    assert runs(log) == runs(per_batch * 2)


def test_side_by_side_ratio_holds_when_the_load_changes() -> None:
    """The machine gets 3x slower halfway through: back to back, the second model would take all of it;
    interleaved, both do, and the ratio of their means stays the true 2."""
    log: list[str] = []
    load = [1.0]
    runners = {k: _SleepRunner(k, ms, load, log) for k, ms in (("slow", 4.0), ("fast", 2.0))}
    config = BenchConfig(warmup_ms=0, duration_s=0.4, min_iterations=5)
    t0 = time.perf_counter()
    real_prepare = runners["fast"].prepare

    def loaded_prepare(batch: int):
        step = real_prepare(batch)

        def wrapped() -> None:
            load[0] = 3.0 if time.perf_counter() - t0 > 0.2 else 1.0
            step()

        return wrapped

    runners["fast"].prepare = loaded_prepare  # type: ignore[method-assign]
    reports = run_side_by_side(runners, [1], config, rounds=8, progress=False)
    mean = {k: r["results"][0]["latency_ms"]["mean"] for k, r in reports.items()}
    assert mean["slow"] / mean["fast"] == pytest.approx(2.0, rel=0.25)


def test_side_by_side_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rounds"):
        run_side_by_side({"a": _SleepRunner("a", 0.1, [1.0], [])}, [1], rounds=0)
    with pytest.raises(ValueError, match="no runners"):
        run_side_by_side({}, [1])
