"""A fixed-range histogram calibrator and fast amax searches (percentile, MSE, entropy).

Why not ModelOpt's ``HistogramCalibrator`` as is: its torch histogram starts with the range of the
first tensor and grows by whole bins; when one quantizer sees tensors of very different ranges (tied
quantizers do) it grows to 100k+ bins and can end with one edge more than it has counts
(``compute_amax`` then fails: "The size of tensor a (181365) must match the size of tensor b
(181364)"); counts go through ``int32`` (a ReLU model's zero bin overflows on a large calibration
set); and its entropy search is a pure-Python double loop (seconds per quantizer).

Here calibration is two passes over the same batches: a max pass fixes each quantizer's range, then
the histogram pass counts ``|x|`` in ``num_bins`` equal bins over that range (float64 counts). The
searches give the same answers as ModelOpt's ``_compute_amax_*`` functions (tests check it).
"""

from __future__ import annotations

import numpy as np
import torch
from modelopt.torch.quantization.calib.calibrator import _Calibrator

DEFAULT_BINS = 2048
START_BIN = 128


class FixedRangeHistogram(_Calibrator):
    """Histogram of ``|x|`` over ``[0, limit]`` in ``num_bins`` bins (values above ``limit`` count
    in the last bin)."""

    def __init__(self, limit: float, num_bits: int = 8, unsigned: bool = False, num_bins: int = DEFAULT_BINS):
        super().__init__(num_bits, None, unsigned)
        if num_bins <= START_BIN:
            raise ValueError(f"num_bins must be > {START_BIN}, got {num_bins}")
        self._limit = max(float(limit), 1e-12)
        self._num_bins = int(num_bins)
        self._calib_bin_edges = torch.linspace(0, self._limit, self._num_bins + 1, dtype=torch.float64)
        self._calib_hist: torch.Tensor | None = None

    def collect(self, x: torch.Tensor) -> None:
        x = x.detach().float().abs().clamp_(max=self._limit)
        hist = torch.histc(x, bins=self._num_bins, min=0.0, max=self._limit).double().cpu()
        self._calib_hist = hist if self._calib_hist is None else self._calib_hist + hist

    def reset(self) -> None:
        self._calib_hist = None

    def compute_amax(
        self, method: str, *, stride: int = 1, start_bin: int = START_BIN, percentile: float = 99.99
    ) -> torch.Tensor | None:
        if self._calib_hist is None:
            return None
        hist = self._calib_hist.numpy()
        edges = self._calib_bin_edges.numpy()
        if method == "percentile":
            return torch.tensor(amax_percentile(hist, edges, percentile), dtype=torch.float32)
        if method == "mse":
            return torch.tensor(
                amax_mse(hist, edges, self._num_bits, self._unsigned, stride, start_bin), dtype=torch.float32
            )
        if method == "entropy":
            return torch.tensor(
                amax_entropy(hist, edges, self._num_bits, self._unsigned, stride, start_bin),
                dtype=torch.float32,
            )
        raise ValueError(f"unknown histogram method {method!r}")


def amax_percentile(hist: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    """The bin edge below which ``percentile`` % of the counts lie."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    cdf = np.cumsum(hist / hist.sum())
    return float(edges[min(int(np.searchsorted(cdf, percentile / 100)), len(edges) - 1)])


def amax_mse(
    hist: np.ndarray, edges: np.ndarray, num_bits: int = 8, unsigned: bool = False, stride: int = 1,
    start_bin: int = START_BIN,
) -> float:  # fmt: skip
    """The bin centre that, as amax, gives the least squared quantization error of the histogram."""
    counts = torch.from_numpy(np.asarray(hist)).float()
    e = torch.from_numpy(np.asarray(edges)).float()
    centers = (e[1:] + e[:-1]) / 2
    max_bound = 2.0 ** (num_bits - 1 + int(unsigned)) - 1
    min_bound = 0.0 if unsigned else -max_bound - 1
    candidates = torch.arange(start_bin, len(centers), stride)
    best, best_i = None, int(candidates[0])
    for chunk in candidates.split(256):
        amax = centers[chunk].unsqueeze(1)
        scale = max_bound / amax
        q = torch.clamp((centers.unsqueeze(0) * scale).round(), min_bound, max_bound) / scale
        mse = ((q - centers) ** 2 * counts).mean(1)
        v, j = mse.min(0)
        if best is None or float(v) < best:
            best, best_i = float(v), int(chunk[j])
    return float(centers[best_i])


def amax_entropy(
    hist: np.ndarray, edges: np.ndarray, num_bits: int = 8, unsigned: bool = False, stride: int = 1,
    start_bin: int = START_BIN, chunk: int = 128,
) -> float:  # fmt: skip
    """TensorRT's entropy calibration: the amax whose quantized distribution has the least KL
    divergence from the histogram (the last one among equals).

    For each candidate ``i`` (bins kept), the first ``i`` bins are merged into ``2**(bits-1)`` groups
    (bin ``k`` into group ``k * n // i``), each non-empty bin gets its group's mean, and the clipped
    tail is added to bin ``i - 1`` of the reference. Computed for many candidates at once.
    """
    bins = torch.tensor(np.asarray(hist), dtype=torch.float64)
    bins[0] = bins[1]
    n = bins.numel()
    nq = 1 << (num_bits - 1 + int(unsigned))
    total = bins.sum()
    cum = bins.cumsum(0)
    k = torch.arange(n)
    divergences = []
    for cands in torch.arange(start_bin, n + 1, stride).split(chunk):
        i = cands.unsqueeze(1)
        kept = k.unsqueeze(0) < i
        head = torch.where(kept, bins.unsqueeze(0), 0.0)
        nonzero = head != 0
        group = torch.where(kept, (k.unsqueeze(0) * nq) // i, nq)
        sums = torch.zeros(len(cands), nq + 1, dtype=torch.float64).scatter_add_(1, group, head)
        sizes = torch.zeros(len(cands), nq + 1, dtype=torch.float64).scatter_add_(1, group, nonzero.double())
        new = torch.where(nonzero, (sums / sizes.clamp(min=1)).gather(1, group), 0.0)
        ref = head.scatter_add(1, i - 1, (total - cum[cands - 1]).unsqueeze(1))
        p = ref / ref.sum(1, keepdim=True)
        q = new / new.sum(1, keepdim=True)
        terms = torch.where(p > 0, p * torch.log(p / q), 0.0)  # p > 0, q == 0: inf
        divergences.append(terms.sum(1))
    d = torch.cat(divergences).numpy()
    last_argmin = len(d) - 1 - int(np.argmin(d[::-1]))
    return float(edges[last_argmin * stride + start_bin])
