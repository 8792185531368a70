"""The histogram calibrator and its amax searches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from modelopt.torch.quantization.calib.histogram import _compute_amax_entropy, _compute_amax_percentile

from yolov9_qat.quant.calib import FixedRangeHistogram, amax_entropy, amax_mse, amax_percentile


def _samples(kind: str, n: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n)
    return {"normal": np.abs(x), "relu": np.maximum(x, 0), "laplace": np.abs(rng.laplace(size=n))}[kind]


@pytest.mark.cpu
@pytest.mark.parametrize("kind", ["normal", "relu", "laplace"])
def test_entropy_and_percentile_match_modelopt(kind) -> None:
    x = _samples(kind)
    hist, edges = np.histogram(x, bins=400, range=(0, x.max()))
    ours = amax_entropy(hist.astype(np.float64), edges)
    ref = float(_compute_amax_entropy(hist.copy(), edges, 8, False))
    assert ours == pytest.approx(ref, rel=1e-6)
    assert amax_percentile(hist, edges, 99.9) == pytest.approx(
        float(_compute_amax_percentile(hist, edges, 99.9))
    )


def _quant_mse(x: torch.Tensor, amax: float) -> float:
    scale = 127 / amax
    return float(((torch.clamp((x * scale).round(), -128, 127) / scale - x) ** 2).mean())


@pytest.mark.cpu
def test_mse_amax_beats_max_and_percentile_on_the_samples() -> None:
    x = torch.from_numpy(_samples("laplace")).float()
    cal = FixedRangeHistogram(float(x.max()), num_bins=1024)
    for part in x.split(10_000):
        cal.collect(part)
    a_mse = float(cal.compute_amax("mse"))
    a_pct = float(cal.compute_amax("percentile", percentile=99.999))
    assert 0 < a_mse < a_pct <= float(x.max())
    assert _quant_mse(x, a_mse) < _quant_mse(x, a_pct) < _quant_mse(x, float(x.max())) * 1.0001
    assert a_mse == pytest.approx(amax_mse(cal._calib_hist.numpy(), cal._calib_bin_edges.numpy()))


@pytest.mark.cpu
def test_fixed_range_histogram_counts_and_clips() -> None:
    cal = FixedRangeHistogram(2.0, num_bins=200)
    assert cal.compute_amax("percentile") is None  # nothing seen yet
    cal.collect(torch.tensor([-1.0, 0.5, 3.0, 0.0]))  # |x|; 3.0 lands in the last bin
    cal.collect(torch.tensor([1.99]))
    assert float(cal._calib_hist.sum()) == 5 and float(cal._calib_hist[-1]) == 2
    assert float(cal.compute_amax("percentile", percentile=100)) == pytest.approx(1.99)  # last bin edge
    cal.reset()
    assert cal._calib_hist is None
    with pytest.raises(ValueError):
        FixedRangeHistogram(1.0, num_bins=64)
