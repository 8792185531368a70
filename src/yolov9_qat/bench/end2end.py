"""End-to-end latency (``bench --end2end``): what an application sees per image, beside the model-only
figures. One step is a batch of decoded BGR frames through ``detect``'s path: letterbox and normalise
on the host (:func:`yolov9_qat.detect.prepare_image`, ``val``'s input), inference, then NMS (the
evaluator's, or the graph's own for end-to-end graphs) and the boxes scaled back to the frames.
JPEG decoding is not timed (a video pipeline hands over decoded frames).

Frames are the images of ``--source`` (decoded once, reused in turn) or, without it, seeded random
1280 x 720 frames (an HD camera's). The detector and its pre-processing are handed in (``bench`` sits
below ``detect``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from yolov9_qat.bench.harness import BenchConfig, Step, run_benchmark
from yolov9_qat.errors import UserError

DEFAULT_FRAME = (720, 1280)  # (h, w): an HD camera frame


def load_frames(files: Sequence[str] = (), limit: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Decoded BGR frames: the first ``limit`` readable ``files``, or without files 8 seeded random HD
    frames."""
    import cv2

    if not files:
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, (*DEFAULT_FRAME, 3), dtype=np.uint8) for _ in range(8)]
    frames = [f for f in (cv2.imread(p) for p in list(files)[:limit]) if f is not None]
    if not frames:
        raise UserError("no readable images for the end-to-end benchmark")
    return frames


class EndToEndRunner:
    """The harness's runner over a detector (``detect``'s :class:`~yolov9_qat.detect.Detector`: its
    ``predict_batch``, ``speed``, ``imgsz``, ``rect``) and its per-frame ``prepare`` (``detect``'s
    :func:`~yolov9_qat.detect.prepare_image`): each step takes ``batch`` frames from host pixels to
    detections in frame coordinates."""

    def __init__(
        self,
        detector: Any,
        prepare: Callable[[np.ndarray, int, bool], tuple[Any, Any]],
        frames: Sequence[np.ndarray],
        device: dict[str, Any],
    ) -> None:
        if not frames:
            raise ValueError("no frames")
        self.detector, self.prepare_image = detector, prepare
        self.frames = list(frames)
        self._device = device
        self.backend = f"{detector.backend} end-to-end"

    def prepare(self, batch: int) -> Step:
        import torch

        prepare_image = self.prepare_image
        self.detector.speed = dict.fromkeys(self.detector.speed, 0.0)  # this batch size's stages only
        self.detector.n_seen = 0
        frames = [self.frames[i % len(self.frames)] for i in range(batch)]
        imgsz, rect = self.detector.imgsz, self.detector.rect

        def step() -> None:
            t0 = time.perf_counter()
            prepared = [prepare_image(f, imgsz, rect) for f in frames]
            x = torch.stack([x for x, _ in prepared])
            self.detector.speed["preprocess"] += time.perf_counter() - t0
            self.detector.predict_batch(x, [s for _, s in prepared])

        return step

    def device(self) -> dict[str, Any]:
        return self._device


def run_end2end(
    runner: EndToEndRunner,
    batches: Iterable[int],
    config: BenchConfig,
    model: str = "",
    precision: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """The harness's report for the end-to-end runner; each batch entry's ``extra`` also holds
    ``stages_ms_per_image`` (preprocess, inference, nms; warm-up included: the same mix)."""

    def stages(row: dict[str, Any]) -> None:
        row["extra"]["stages_ms_per_image"] = runner.detector.speed_ms()

    report = run_benchmark(runner, batches, config, model, precision, progress, on_result=stages)
    h, w = runner.frames[0].shape[:2]
    report["frames"] = {"count": len(runner.frames), "first_hw": [int(h), int(w)]}
    report["pipeline"] = "host letterbox + normalise, inference, NMS (or the graph's), boxes to frame pixels"
    return report
