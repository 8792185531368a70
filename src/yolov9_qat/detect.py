"""``yolov9-qat detect``: run a model on images, folders, globs or videos and save annotated results.

Upstream YOLOv9's ``detect.py`` habits (flags, ``runs/detect/exp`` folders, ``labels/<stem>.txt``),
with the *same* input and post-processing as ``val``, so that a box seen in a picture is a box ``val``
scored:

* images go through ``val``'s own data set code (:class:`~yolov9_qat.data.dataset.YoloDataset` with
  augmentation off: its file checks, its resize and :func:`~yolov9_qat.data.augment.letterbox`); video
  frames through :func:`prepare_image`, which makes the same input from a decoded frame (a test holds
  the two equal);
* predictions are post-processed as :class:`~yolov9_qat.eval.evaluator.Evaluator` does:
  :func:`~yolov9_qat.eval.nms.non_max_suppression` (multi-label, per class) for plain outputs, the
  graph's own NMS for end-to-end graphs, then :func:`~yolov9_qat.eval.nms.scale_boxes`;
* PyTorch checkpoints are scored like ``val``: each image on its own rectangle padded by half a stride
  (``--rect``, on by default for ``--backend torch``; it is ``val``'s rectangle for a batch of one),
  exported graphs on the ``--img`` square they were exported at (``--no-rect``).

Boxes are drawn with ``supervision`` (``BoxAnnotator`` / ``LabelAnnotator``). Only the standard library
is imported at module level: ``cli.py`` imports this module to build its parser.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolov9_qat.errors import UserError
from yolov9_qat.runtime.engine_options import EngineOptions

log = logging.getLogger("yolov9_qat.detect")

#: Video file suffixes read with ``cv2.VideoCapture`` (lower case, without the dot), as upstream's.
VID_FORMATS: tuple[str, ...] = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv")
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pt", ".pth")
ENGINE_SUFFIXES: tuple[str, ...] = (".engine", ".plan", ".trt")
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime", "tensorrt")
#: ``val``'s letterbox geometry: batch shapes are multiples of this stride, padded by half of one.
STRIDE, RECT_PAD = 32, 0.5
#: Up to this many labels per picture are placed by supervision's ``smart_position`` (kept inside it).
SMART_LABELS = 300


# --- sources ---------------------------------------------------------------------------------------
@dataclass
class Source:
    """What ``--source`` names: image files and video files (absolute paths, sorted), and for each file
    the name its results get under the run folder (its path relative to the folder it was found in)."""

    images: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    out_names: dict[str, str] = field(default_factory=dict)


def _suffix(path: str) -> str:
    return os.path.splitext(path)[1][1:].lower()


def resolve_source(source: str | os.PathLike[str]) -> Source:
    """Image and video files of a file, a folder (recursive), a glob or a ``.txt`` list of images.

    Raises :class:`UserError` (one line) for a source that does not exist, and for one where no image
    or video is found.
    """
    from yolov9_qat.data.config import IMG_FORMATS

    text = os.path.expanduser(os.fspath(source)).strip()
    if not text:
        raise UserError("--source is empty: give an image, a folder, a glob or a video file")
    if text.isnumeric() or "://" in text:
        raise UserError(f"--source {text}: webcams and streams are not supported; give files or a folder")
    kinds = f"image types: {', '.join(IMG_FORMATS)}; video types: {', '.join(VID_FORMATS)}"
    out = Source()
    found: list[tuple[str, str]] = []  # (absolute path, name under the run folder)
    p = Path(text)
    if any(c in text for c in "*?[") and not p.exists():
        matches = sorted(glob.glob(text, recursive=True))
        found = [(os.path.abspath(m), os.path.basename(m)) for m in matches if os.path.isfile(m)]
        if not found:
            raise UserError(f"--source {text}: the pattern matches no files ({kinds})")
    elif p.is_dir():
        for root, dirs, names in os.walk(p, followlinks=True):
            dirs.sort()
            for n in sorted(names):
                full = os.path.join(root, n)
                found.append((os.path.abspath(full), os.path.relpath(full, p)))
    elif p.is_file() and p.suffix.lower() == ".txt":
        from yolov9_qat.data.dataset import collect_image_files

        found = [(f, os.path.basename(f)) for f in collect_image_files(p)]
    elif p.is_file():
        found = [(os.path.abspath(p), p.name)]
    else:
        raise UserError(f"--source {text}: no such file or folder")
    for full, name in found:
        if _suffix(full) in IMG_FORMATS:
            out.images.append(full)
        elif _suffix(full) in VID_FORMATS:
            out.videos.append(full)
        else:
            continue
        out.out_names[full] = name
    if not out.images and not out.videos:
        if p.is_file() and not any(c in text for c in "*?["):
            raise UserError(f"--source {text}: not an image, a video or a .txt list of images ({kinds})")
        raise UserError(f"--source {text}: no images or videos found ({kinds})")
    return out


# --- the input val makes ---------------------------------------------------------------------------
def input_shape(h0: int, w0: int, imgsz: int, rect: bool) -> tuple[int, int]:
    """The network input ``(h, w)`` ``val`` gives an ``h0 x w0`` image: ``imgsz`` square, or with
    ``rect`` its rectangle as :class:`~yolov9_qat.data.dataset.YoloDataset` computes it for a batch of
    one (the long side ``imgsz``, both sides rounded up to a multiple of 32 plus half a stride)."""
    if not rect:
        return imgsz, imgsz
    ar = h0 / w0
    sh, sw = (ar, 1.0) if ar < 1 else (1.0, 1.0 / ar) if ar > 1 else (1.0, 1.0)
    return (
        int(math.ceil(sh * imgsz / STRIDE + RECT_PAD) * STRIDE),
        int(math.ceil(sw * imgsz / STRIDE + RECT_PAD) * STRIDE),
    )


def prepare_image(img: Any, imgsz: int, rect: bool = False) -> tuple[Any, Any]:
    """A decoded BGR image (a video frame) -> ``(CHW uint8 RGB tensor, shapes)``, exactly what
    ``val``'s data set returns for that image: the long side resized to ``imgsz`` (INTER_AREA when
    shrinking, INTER_LINEAR when enlarging), then :func:`~yolov9_qat.data.augment.letterbox` (value 114,
    never scaled up again) to :func:`input_shape`. ``shapes`` is ``((h0, w0), ((gain_h, gain_w),
    (pad_w, pad_h)))``, what :func:`~yolov9_qat.eval.nms.scale_boxes` takes."""
    import cv2
    import numpy as np
    import torch

    from yolov9_qat.data.augment import letterbox

    h0, w0 = img.shape[:2]
    r = imgsz / max(h0, w0)
    h, w = max(1, round(h0 * r)), max(1, round(w0 * r))
    if (h, w) != (h0, w0):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR if r > 1 else cv2.INTER_AREA)
    img, (rw, rh), (padw, padh) = letterbox(img, input_shape(h0, w0, imgsz, rect), auto=False, scaleup=False)
    shapes = ((h0, w0), ((h * rh / h0, w * rw / w0), (padw, padh)))
    chw = np.ascontiguousarray(img.transpose(2, 0, 1)[::-1])  # HWC BGR -> CHW RGB
    return torch.from_numpy(chw), shapes


# --- results ---------------------------------------------------------------------------------------
@dataclass
class ImageResult:
    """One image's (or video frame's) detections: ``det`` is an ``(n, 6)`` float32 array ``x1, y1, x2,
    y2, conf, cls`` in original-image pixels, sorted by ``conf`` descending (as ``val`` scores them)."""

    path: str
    shape: tuple[int, int]
    det: Any
    frame: int | None = None  # 1-based frame number for video frames (upstream's numbering)

    def to_json(self, names: Sequence[str]) -> dict[str, Any]:
        rows = []
        for x1, y1, x2, y2, conf, cls in self.det.tolist():
            c = int(cls)
            rows.append(
                {
                    "class": c,
                    "name": names[c] if 0 <= c < len(names) else str(c),
                    "conf": round(conf, 5),
                    "box": [round(x1, 3), round(y1, 3), round(x2, 3), round(y2, 3)],
                }
            )
        out: dict[str, Any] = {"path": self.path, "shape": list(self.shape), "detections": rows}
        if self.frame is not None:
            out["frame"] = self.frame
        return out


def backend_for(weights: str | os.PathLike[str], backend: str = "auto") -> str:
    """The backend a model file runs on: checkpoint -> torch, ``.onnx`` -> onnxruntime,
    ``.engine`` / ``.plan`` -> tensorrt; ``backend`` other than ``auto`` is taken as given."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    suffix = Path(weights).suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "torch"
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    raise UserError(
        f"--weights {weights}: unknown model type {suffix or '(no suffix)'!r}; expected a checkpoint "
        f"({', '.join(CHECKPOINT_SUFFIXES)}), an .onnx file or a TensorRT engine "
        f"({', '.join(ENGINE_SUFFIXES)}), or say which with --backend"
    )


class Detector:
    """A model on one backend with ``val``'s input and post-processing; returns detections per image.

    Args:
        weights: a float or QAT checkpoint, an ONNX file (plain or end-to-end) or a TensorRT engine.
        backend: ``auto`` (from the file, :func:`backend_for`), ``torch``, ``onnxruntime`` or ``tensorrt``.
        imgsz: the long side of the network input; ``None``: 640 for checkpoints, the graph's input
            size for exported models.
        device: PyTorch / TensorRT device (``''``: GPU 0 if there is one).
        conf_thres, iou_thres, max_det, classes, agnostic: the NMS settings (``val``'s function).
        half: FP16 inference (PyTorch on CUDA).
        threads: ONNX Runtime intra-op threads (0: all cores).
        ort_rewrite: how ONNX Runtime runs a Q/DQ graph (see :mod:`yolov9_qat.runtime.onnxruntime`).
        rect: per-image rectangles padded by half a stride (``None``: on for torch, off otherwise).
        names: class names (default: the model's; ONNX metadata; class ids for engines).
        engine: TensorRT options (precision, engine cache ...; :class:`EngineOptions`), for ONNX files
            built into an engine first.
    """

    def __init__(
        self,
        weights: str | os.PathLike[str],
        *,
        backend: str = "auto",
        imgsz: int | None = None,
        device: str = "",
        conf_thres: float = 0.25,
        iou_thres: float = 0.45,
        max_det: int = 1000,
        classes: Sequence[int] | None = None,
        agnostic: bool = False,
        half: bool = False,
        threads: int = 0,
        ort_rewrite: str = "auto",
        rect: bool | None = None,
        names: Sequence[str] | None = None,
        engine: EngineOptions | None = None,
    ) -> None:
        self.weights = Path(weights)
        self.backend = backend_for(self.weights, backend)
        if not self.weights.is_file():
            raise UserError(f"--weights {self.weights}: no such file")
        if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
            raise UserError(f"--conf-thres {conf_thres} / --iou-thres {iou_thres}: both must be in [0, 1]")
        if max_det < 1:
            raise UserError(f"--max-det {max_det}: must be at least 1")
        self.conf_thres, self.iou_thres, self.max_det = float(conf_thres), float(iou_thres), int(max_det)
        self.classes = sorted({int(c) for c in classes}) if classes else None
        self.agnostic = bool(agnostic)
        self.end2end = False
        self.info: dict[str, Any] = {"backend": self.backend, "weights": str(self.weights)}
        model_names: list[str] | None = None
        fixed_size: int | None = None
        if self.backend == "torch":
            model_names = self._load_torch(device, half)
        elif self.backend == "onnxruntime":
            model_names, fixed_size = self._load_ort(threads, ort_rewrite)
        else:
            model_names, fixed_size = self._load_trt(device, imgsz, engine)
        self.names = [str(n) for n in (names or model_names or [])]
        if rect and self.backend != "torch" and fixed_size is not None:
            raise UserError(
                f"--rect: {self.weights.name} takes {fixed_size}x{fixed_size} images only; use --no-rect"
            )
        self.rect = (self.backend == "torch") if rect is None else bool(rect)
        size = int(imgsz or fixed_size or 640)
        if size < 1:
            raise UserError(f"--img {size}: must be positive")
        if not self.rect and size % STRIDE:
            new = int(math.ceil(size / STRIDE) * STRIDE)
            log.warning("--img %d is not a multiple of the stride %d: using %d", size, STRIDE, new)
            size = new
        self.imgsz = size
        if self.backend == "onnxruntime":
            self._ort.check_input((1, 3, size, size))
        if self.end2end:
            nms = self.info.get("nms") or {}
            if nms and self.conf_thres < float(nms.get("conf_thres", 0)):
                log.warning(
                    "%s runs its own NMS at conf %.3g: --conf-thres %.3g cannot bring back lower scores",
                    self.weights.name, float(nms["conf_thres"]), self.conf_thres,
                )  # fmt: skip
            if self.agnostic:
                log.warning("--agnostic-nms: %s runs its own (per-class) NMS; ignored", self.weights.name)
        self.speed = {"preprocess": 0.0, "inference": 0.0, "nms": 0.0}
        self.n_seen = 0

    # --- loading --------------------------------------------------------------------------------
    def _load_torch(self, device: str, half: bool) -> list[str]:
        from yolov9_qat.eval.evaluator import torch_predictor
        from yolov9_qat.models import checkpoint
        from yolov9_qat.models.checkpoint import is_qat_checkpoint
        from yolov9_qat.quant.io import apply_qat_state
        from yolov9_qat.utils.runs import select_device

        dev = select_device(device)
        if half and dev.type != "cuda":
            raise UserError("--half needs a CUDA device")
        ck = checkpoint.load(self.weights)
        model = ck.model
        if is_qat_checkpoint(ck):  # fake INT8, as `yolov9-qat eval` runs it
            model = apply_qat_state(ck.model, ck.extra["qat"], where=str(self.weights))
            self.info["precision"] = "int8 (fake-quantized)"
        else:
            self.info["precision"] = "fp16" if half else "fp32"
        self.nc = int(model.nc)
        self.info.update(cfg=model.cfg_name, device=str(dev))
        self._predict = torch_predictor(model, dev, half=half)
        return list(model.names)

    def _load_ort(self, threads: int, rewrite: str) -> tuple[list[str] | None, int | None]:
        from yolov9_qat.runtime.onnxruntime import OrtModel

        ort_model = OrtModel(self.weights, threads=threads or None, rewrite=rewrite or "auto")
        meta = ort_model.metadata
        if meta.get("layout") == "deepstream":
            raise UserError(
                f"{self.weights} has DeepStream's output layout; export a plain or end-to-end graph for detect"
            )
        self._ort = ort_model
        self._predict = ort_model
        self.end2end = ort_model.end2end
        self.nc = int(meta["nc"]) if meta.get("nc") is not None else None
        self.info.update(ort_model.describe())
        if isinstance(meta.get("nms"), dict):
            self.info["nms"] = meta["nms"]
        names = meta.get("names")
        h, w = ort_model.height, ort_model.width
        fixed = h if h is not None and h == w else None  # None: a dynamic-size graph takes any --img
        return (list(names) if isinstance(names, list) else None), fixed

    def _load_trt(
        self, device: str, imgsz: int | None, engine: EngineOptions | None
    ) -> tuple[list[str] | None, int | None]:
        import dataclasses

        from yolov9_qat.runtime.tensorrt import device_index, require_gpu_stack
        from yolov9_qat.runtime.trt_cli import tensorrt_val_predictor

        suffix = self.weights.suffix.lower()
        if suffix not in ENGINE_SUFFIXES and suffix != ".onnx":
            raise UserError(
                f"--backend tensorrt takes an .onnx file or a TensorRT engine, not {self.weights.name}"
            )
        device_index(device)  # input errors (--device cpu) before environment errors
        require_gpu_stack("detect --backend tensorrt")
        options = dataclasses.replace(engine or EngineOptions(), device=device, img=imgsz)
        self._predict = tensorrt_val_predictor(options, self.weights, batch_size=1)
        runner = getattr(self._predict, "runner", None)
        self.end2end = bool(getattr(runner, "end2end", False))
        self.nc = None
        onnx = (
            self.weights
            if suffix == ".onnx"
            else self.weights.with_name(self.weights.name.split(".")[0] + ".onnx")
        )
        names = None
        if onnx.is_file():
            import onnx as onnx_lib

            from yolov9_qat.export.onnx import read_metadata

            meta = read_metadata(onnx_lib.load(str(onnx), load_external_data=False))
            names = meta.get("names") if isinstance(meta.get("names"), list) else None
        profile = getattr(runner, "profile", None) or {}
        hi = profile.get("max")
        fixed = int(hi[-1]) if hi and hi[-1] == hi[-2] else None
        return names, fixed

    # --- inference ------------------------------------------------------------------------------
    def predict_batch(self, images: Any, shapes: Sequence[Any]) -> list[Any]:
        """``images`` uint8 ``(B, 3, H, W)`` as ``val``'s loader makes them, ``shapes`` the loader's
        ``shapes`` -> per image an ``(n, 6)`` float32 numpy array in original pixels."""
        import torch

        from yolov9_qat.eval.nms import non_max_suppression, scale_boxes

        _, _, h, w = images.shape
        t0 = time.perf_counter()
        pred = self._predict(images.float() / 255)
        t1 = time.perf_counter()
        if isinstance(pred, (list, tuple)):  # end-to-end: NMS ran inside the graph
            dets = []
            for d in pred:
                d = torch.as_tensor(d).float().cpu().reshape(-1, 6)
                d = d[d[:, 4] > self.conf_thres]
                if self.classes is not None:
                    d = d[(d[:, 5:6] == torch.tensor(self.classes, dtype=torch.float32)).any(1)]
                dets.append(d[: self.max_det])
        else:
            dets = non_max_suppression(
                torch.as_tensor(pred).float().cpu(), self.conf_thres, self.iou_thres, max_det=self.max_det,
                classes=self.classes, agnostic=self.agnostic,
            )  # fmt: skip
        out = []
        for det, ((h0, w0), ratio_pad) in zip(dets, shapes, strict=True):
            if len(det):
                det = det.clone()
                det[:, :4] = torch.as_tensor(scale_boxes((h, w), det[:, :4], (h0, w0), ratio_pad))
            out.append(det.numpy().astype("float32").reshape(-1, 6))
        self.speed["inference"] += t1 - t0
        self.speed["nms"] += time.perf_counter() - t1
        self.n_seen += len(out)
        return out

    def __call__(self, img: Any) -> Any:
        """Detections ``(n, 6)`` (original pixels) of one decoded BGR image or video frame."""
        t0 = time.perf_counter()
        x, shapes = prepare_image(img, self.imgsz, self.rect)
        self.speed["preprocess"] += time.perf_counter() - t0
        return self.predict_batch(x[None], [shapes])[0]

    def detect_files(self, files: Sequence[str], progress: bool = False) -> DetectedImages:
        """Run on image files through ``val``'s data set code; see :class:`DetectedImages`."""
        return DetectedImages(self, files, progress)

    def speed_ms(self) -> dict[str, float]:
        """Milliseconds per image of pre-processing, inference and NMS so far."""
        n = max(1, self.n_seen)
        return {k: round(1e3 * v / n, 3) for k, v in self.speed.items()}


class DetectedImages:
    """Image files run through ``val``'s data set (:class:`~yolov9_qat.data.dataset.YoloDataset`,
    augmentation off, batch of one); iterate for :class:`ImageResult` in file order.

    Files the data set's checks reject (corrupt, truncated, too small) or that fail to decode are
    skipped and listed in :attr:`skipped` as ``(path, why)``.
    """

    def __init__(self, detector: Detector, files: Sequence[str], progress: bool = False) -> None:
        self.detector = detector
        self.files = list(files)
        self.progress = progress
        self.skipped: list[tuple[str, str]] = []
        self.dataset = None
        if not self.files:
            return
        from yolov9_qat.data.dataset import YoloDataset
        from yolov9_qat.errors import DataError

        data_log = logging.getLogger("yolov9_qat.data")
        level = data_log.level
        data_log.setLevel(logging.ERROR)  # its summary line speaks of labels and caches: not detect's
        try:
            self.dataset = YoloDataset(
                self.files, imgsz=detector.imgsz, augment=False, rect=detector.rect, batch_size=1,
                stride=STRIDE, pad=RECT_PAD, cache_labels=False, prefix="detect: ",
            )  # fmt: skip
        except DataError:
            self.dataset = None  # no usable image at all: every one is skipped below
        finally:
            data_log.setLevel(level)
        usable = set(self.dataset.im_files) if self.dataset is not None else set()
        reasons = self._reasons()
        self.skipped = [
            (f, reasons.get(f, "unreadable image"))
            for f in map(os.path.abspath, self.files)
            if f not in usable
        ]

    def _reasons(self) -> dict[str, str]:
        out = {}
        for msg in getattr(self.dataset, "messages", None) or []:
            path, _, why = msg.partition(": ")
            out[os.path.abspath(path)] = why
        return out

    def __len__(self) -> int:
        return len(self.dataset) if self.dataset is not None else 0

    def __iter__(self) -> Iterator[ImageResult]:
        if self.dataset is None:
            return
        from tqdm import tqdm

        from yolov9_qat.errors import DataError

        ds = self.dataset
        order = sorted(range(len(ds)), key=lambda i: ds.im_files[i])  # rect sorted them by aspect ratio
        for i in tqdm(order, desc="detect", disable=not self.progress, leave=False):
            t0 = time.perf_counter()
            try:
                img, _, path, shapes = ds[i]
            except DataError as e:
                self.skipped.append((ds.im_files[i], str(e)))
                continue
            self.detector.speed["preprocess"] += time.perf_counter() - t0
            det = self.detector.predict_batch(img[None], [shapes])[0]
            yield ImageResult(path=path, shape=tuple(int(v) for v in shapes[0]), det=det)


def detect_images(
    weights: str | os.PathLike[str], files: Sequence[str], **detector_options: Any
) -> list[ImageResult]:
    """Detections of image files with a fresh :class:`Detector` (keyword options as it takes them);
    unreadable files are left out."""
    return list(Detector(weights, **detector_options).detect_files(files))


# --- drawing and writing ---------------------------------------------------------------------------
class Annotator:
    """Boxes, class names and scores drawn with ``supervision`` (upstream's ``--line-thickness``,
    ``--hide-labels``, ``--hide-conf``). Without a line thickness the style follows each picture's size
    (supervision's optimal line thickness and text scale, the text no smaller than 0.3)."""

    def __init__(
        self,
        names: Sequence[str],
        line_thickness: int | None = None,
        hide_labels: bool = False,
        hide_conf: bool = False,
    ) -> None:
        self.names = list(names)
        self.hide_labels, self.hide_conf = hide_labels, hide_conf
        self.line_thickness = line_thickness
        self._styles: dict[Any, tuple[Any, Any, Any]] = {}

    def _annotators(self, wh: tuple[int, int]) -> tuple[Any, Any, Any]:
        """(box, label, label without smart placement) annotators for a ``w x h`` picture."""
        import supervision as sv

        key = wh if self.line_thickness is None else None
        if key not in self._styles:
            if self.line_thickness is None:
                t = sv.calculate_optimal_line_thickness(wh)
                scale = max(0.3, sv.calculate_optimal_text_scale(wh))
            else:
                t = max(1, int(self.line_thickness))
                scale = max(0.3, t / 6)
            # smart_position keeps labels inside the picture (a box at the top edge has no room above
            # it) and spreads them apart; its cost grows about with the square of the labels
            style = {"text_scale": scale, "text_thickness": max(1, t // 3), "text_padding": max(2, 2 * t)}
            self._styles[key] = (
                sv.BoxAnnotator(thickness=t),
                sv.LabelAnnotator(**style, smart_position=True),
                sv.LabelAnnotator(**style),
            )
        return self._styles[key]

    def _name(self, c: int) -> str:
        return self.names[c] if 0 <= c < len(self.names) else str(c)

    def __call__(self, img: Any, det: Any) -> Any:
        """``img`` (BGR, drawn on in place and returned) with ``det`` ``(n, 6)`` in its pixels."""
        import numpy as np
        import supervision as sv

        if not len(det):
            return img
        box, label, label_many = self._annotators((int(img.shape[1]), int(img.shape[0])))
        detections = sv.Detections(
            xyxy=np.asarray(det[:, :4], dtype=np.float32),
            confidence=np.asarray(det[:, 4], dtype=np.float32),
            class_id=np.asarray(det[:, 5]).astype(int),
        )
        img = box.annotate(img, detections)
        if not self.hide_labels:
            labels = [
                self._name(int(c)) if self.hide_conf else f"{self._name(int(c))} {s:.2f}"
                for c, s in zip(detections.class_id, detections.confidence, strict=True)
            ]
            labeler = label if len(labels) <= SMART_LABELS else label_many
            img = labeler.annotate(img, detections, labels=labels)
        return img


def _coco_rows(image_id: Any, det: Any, class_map: Any = None) -> list[dict[str, Any]]:
    """COCO results rows of one image (``val --save-json``'s layout: bbox x, y, w, h rounded to 3
    decimals, score to 5); ``class_map`` maps class index -> ``category_id`` (data.yaml's
    ``category_ids``), else the class index is the id."""
    rows = []
    for x1, y1, x2, y2, conf, cls in det.tolist():
        c = int(cls)
        cat = int(class_map[c]) if class_map is not None else c
        rows.append(
            {
                "image_id": image_id,
                "category_id": cat,
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(conf, 5),
            }
        )
    return rows


def _image_id(stem: str) -> Any:
    """Upstream ``val.py``'s COCO image id: the file stem, as an integer when it is one."""
    return int(stem) if stem.isnumeric() else stem


# --- the command -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``yolov9-qat detect`` (upstream ``detect.py``'s names)."""
    p = parser
    p.add_argument(
        "--weights", required=True,
        help="float or QAT checkpoint (.pt), ONNX file (plain or end-to-end) or TensorRT engine (.engine/.plan)",
    )  # fmt: skip
    p.add_argument("--source", required=True, help="image, folder (recursive), glob, .txt list or video file")
    p.add_argument(
        "--backend", choices=BACKENDS, default="auto",
        help="auto: from the file (checkpoint: torch, .onnx: onnxruntime, .engine/.plan: tensorrt)",
    )  # fmt: skip
    p.add_argument(
        "--img", "--imgsz", "--img-size", dest="img", type=int, default=None,
        help="inference size (long side); default 640, or an exported model's own input size",
    )  # fmt: skip
    p.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    p.add_argument(
        "--device", default="", help="cpu or a CUDA index such as 0 (default: GPU 0 if there is one)"
    )
    p.add_argument(
        "--classes", nargs="+", type=int, default=None, help="keep only these classes: --classes 0 2 3"
    )
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument(
        "--rect", action=argparse.BooleanOptionalAction, default=None,
        help="each image on its own rectangle padded by half a stride, as val (default: on for --backend "
        "torch, off for ONNX / TensorRT, whose input is --img square)",
    )  # fmt: skip
    p.add_argument(
        "--data", default="", help="data.yaml: class names (and COCO category ids for --save-json)"
    )
    p.add_argument(
        "--save-txt", action="store_true", help="write labels/<stem>.txt (class cx cy w h normalised)"
    )
    p.add_argument("--save-conf", action="store_true", help="with --save-txt: add each detection's score")
    p.add_argument("--save-json", action="store_true", help="write <weights>_predictions.json (COCO results)")
    p.add_argument("--nosave", action="store_true", help="do not save annotated images / videos")
    p.add_argument(
        "--line-thickness", type=int, default=None, help="box thickness in pixels (default: by picture size)"
    )
    p.add_argument("--hide-labels", action="store_true", help="draw boxes only")
    p.add_argument("--hide-conf", action="store_true", help="labels without scores")
    p.add_argument("--half", action="store_true", help="FP16 inference (PyTorch on CUDA)")
    p.add_argument("--vid-stride", type=int, default=1, help="video: run on every N-th frame")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    p.add_argument(
        "--ort-rewrite", default="auto",
        help="ONNX Runtime, Q/DQ graphs: auto, qlinear, integer, u8 or none (see `val --help`)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--project", default="runs/detect", help="runs folder")
    p.add_argument("--name", default="exp", help="run name (<project>/<name>)")
    p.add_argument(
        "--exist-ok", action="store_true", help="reuse <project>/<name> instead of numbering a new one"
    )
    from yolov9_qat.runtime.engine_options import add_engine_args

    add_engine_args(p, groups=("engine",))  # --precision, --engine-cache ... for --backend tensorrt


def _names_from_data(path: str, nc: int | None) -> tuple[list[str], Any]:
    from yolov9_qat.data.config import load_data_yaml

    data = load_data_yaml(path)
    names = list(data["names"])
    if nc is not None and nc != len(names):
        raise UserError(f"--data {path} has {len(names)} classes, the model predicts {nc}")
    return names, data.get("category_ids")


class _Outputs:
    """What one ``detect`` run writes under its run folder, image by image and frame by frame."""

    def __init__(
        self, args: argparse.Namespace, source: Source, names: list[str], class_map: Any, save_dir: Path
    ):
        self.args, self.source, self.save_dir = args, source, save_dir
        self.labels_dir = save_dir / "labels"
        self.class_map = class_map
        self.annotate = (
            None if args.nosave else Annotator(names, args.line_thickness, args.hide_labels, args.hide_conf)
        )
        self.results: list[ImageResult] = []
        self.coco: list[dict[str, Any]] = []
        self.saved: list[str] = []

    def rel(self, path: str) -> Path:
        """A file's name under the run folder (its path below the ``--source`` folder)."""
        return Path(self.source.out_names.get(path, os.path.basename(path)))

    def add(self, r: ImageResult, img: Any, stem: str) -> Any:
        """Record ``r``; write its label file and COCO rows; return ``img`` annotated (or ``None``)."""
        import torch

        from yolov9_qat.eval.evaluator import write_txt

        self.results.append(r)
        if self.args.save_txt:
            txt = self.labels_dir / self.rel(r.path).with_name(f"{stem}.txt")
            write_txt(txt, torch.from_numpy(r.det), r.shape, self.args.save_conf)
        if self.args.save_json:
            self.coco.extend(_coco_rows(_image_id(stem), r.det, self.class_map))
        if self.annotate is None or img is None:
            return None
        return self.annotate(img, r.det)

    def image(self, r: ImageResult) -> None:
        import cv2

        from yolov9_qat.utils.files import atomic_save

        img = cv2.imread(r.path) if self.annotate is not None else None
        img = self.add(r, img, self.rel(r.path).stem)
        if img is not None:
            dest = self.save_dir / self.rel(r.path)
            atomic_save(dest, lambda tmp: _imwrite(tmp, img))
            self.saved.append(str(dest))
        log.debug("%s: %d detections", r.path, len(r.det))

    def video(self, detector: Detector, path: str, progress: bool) -> tuple[int, str | None]:
        """Run on every ``--vid-stride``-th frame of one video; write the annotated mp4 (``mp4v``).

        Returns ``(frames run, None)``, or ``(0, why)`` when the file gives no frame.
        """
        import cv2
        from tqdm import tqdm

        from yolov9_qat.utils.files import atomic_path

        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            return 0, "cannot be opened as a video"
        fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        rel = self.rel(path)
        dest = self.save_dir / rel.with_suffix(".mp4")
        stride = self.args.vid_stride
        n = 0
        writer = None
        bar = tqdm(total=total or None, desc=f"detect {rel.name}", disable=not progress, leave=False)
        try:
            with atomic_path(dest) if self.annotate is not None else contextlib.nullcontext() as tmp:
                frame_no = 0
                while True:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    frame_no += 1
                    bar.update(1)
                    if (frame_no - 1) % stride:
                        continue
                    r = ImageResult(
                        path=path, shape=tuple(frame.shape[:2]), det=detector(frame), frame=frame_no
                    )
                    frame = self.add(r, frame, f"{rel.stem}_{frame_no}")
                    n += 1
                    if tmp is None:
                        continue
                    if writer is None:
                        h, w = frame.shape[:2]
                        writer = cv2.VideoWriter(
                            str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps / stride, (w, h)
                        )
                        if not writer.isOpened():
                            raise UserError(f"cannot write the video {dest} (no mp4v encoder in this OpenCV)")
                    writer.write(frame)
                if n == 0:
                    raise _NoFrames
                if writer is not None:
                    writer.release()
                    writer = None
        except _NoFrames:
            return 0, "no frame could be decoded"
        finally:
            bar.close()
            cap.release()
            if writer is not None:
                writer.release()
        if self.annotate is not None:
            self.saved.append(str(dest))
        return n, None


def run(args: argparse.Namespace) -> int:
    """``yolov9-qat detect``: annotated images / videos, labels, COCO JSON and ``detections.json``."""
    from yolov9_qat.eval.evaluator import write_coco_json
    from yolov9_qat.utils.files import atomic_write_json
    from yolov9_qat.utils.runs import run_dir

    if args.vid_stride < 1:
        raise UserError(f"--vid-stride {args.vid_stride}: must be at least 1")
    if args.line_thickness is not None and args.line_thickness < 1:
        raise UserError(f"--line-thickness {args.line_thickness}: must be at least 1")
    source = resolve_source(args.source)
    backend_for(args.weights, args.backend)  # an unknown model file before anything is loaded
    detector = Detector(
        args.weights, backend=args.backend, imgsz=args.img, device=args.device, conf_thres=args.conf_thres,
        iou_thres=args.iou_thres, max_det=args.max_det, classes=args.classes, agnostic=args.agnostic_nms,
        half=args.half, threads=args.threads, ort_rewrite=args.ort_rewrite, rect=args.rect,
        engine=EngineOptions.from_namespace(args),
    )  # fmt: skip
    class_map = None
    if args.data:
        detector.names, class_map = _names_from_data(args.data, detector.nc)
    names = detector.names or [str(i) for i in range(detector.nc or 0)]
    if detector.classes is not None and detector.nc is not None:
        bad = [c for c in detector.classes if not 0 <= c < detector.nc]
        if bad:
            raise UserError(
                f"--classes {' '.join(map(str, bad))}: the model has classes 0..{detector.nc - 1}"
            )

    save_dir = run_dir(args.project, args.name, args.exist_ok)
    out = _Outputs(args, source, names, class_map, save_dir)
    progress = not args.no_progress
    images = detector.detect_files(source.images, progress=progress and len(source.images) > 1)
    for r in images:
        out.image(r)
    skipped = list(images.skipped)
    n_frames = n_videos = 0
    for video in source.videos:
        n, why = out.video(detector, video, progress)
        if why is not None:
            skipped.append((video, why))
        else:
            n_frames += n
            n_videos += 1
    n_images = len(out.results) - n_frames
    if n_images == 0 and n_frames == 0:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise UserError(f"--source {args.source}: none of the {len(skipped)} file(s) could be read{first}")

    n_det = sum(len(r.det) for r in out.results)
    summary: dict[str, Any] = {
        **detector.info,
        "weights": str(args.weights),
        "source": str(args.source),
        "imgsz": detector.imgsz,
        "rect": detector.rect,
        "conf_thres": detector.conf_thres,
        "iou_thres": detector.iou_thres,
        "max_det": detector.max_det,
        "classes": detector.classes,
        "agnostic_nms": detector.agnostic,
        "names": names,
        "images": n_images,
        "videos": n_videos,
        "frames": n_frames,
        "detections": n_det,
        "skipped": len(skipped),
        "skipped_files": [{"path": p, "why": why} for p, why in skipped],
        "speed_ms": detector.speed_ms(),
        "save_dir": str(save_dir),
        "saved": out.saved,
    }
    if args.save_txt:
        summary["labels"] = str(out.labels_dir)
    if args.save_json:
        pred_json = write_coco_json(save_dir / f"{Path(args.weights).stem}_predictions.json", out.coco)
        summary["predictions_json"] = str(pred_json)
    summary["results"] = [r.to_json(names) for r in out.results]
    atomic_write_json(save_dir / "detections.json", summary)

    for path, why in skipped[:5]:
        log.warning("skipped %s: %s", path, why)
    sp = summary["speed_ms"]
    print(
        f"Speed: {sp['preprocess']:.1f} ms pre-process, {sp['inference']:.1f} ms inference, "
        f"{sp['nms']:.1f} ms NMS per image at {detector.imgsz} px ({detector.backend})"
    )
    what = f"{n_images} image(s)" + (f", {n_frames} frame(s) of {n_videos} video(s)" if source.videos else "")
    where = f"results in {save_dir}"
    if out.saved:
        where += f" ({len(out.saved)} annotated file(s))"
    if args.save_txt:
        where += f", labels in {out.labels_dir}"
    if args.save_json:
        where += f", COCO JSON {summary['predictions_json']}"
    print(
        f"detect: {what}, {n_det} detection(s), {len(skipped)} skipped (unreadable); {where}; "
        f"summary {save_dir / 'detections.json'}"
    )
    return 0


class _NoFrames(Exception):
    """A video that opened but gave no frame."""


def _imwrite(path: Path, img: Any) -> None:
    import cv2

    if not cv2.imwrite(str(path), img):
        raise UserError(f"cannot write the image {path}")


__all__ = [
    "Annotator",
    "DetectedImages",
    "Detector",
    "ImageResult",
    "Source",
    "add_arguments",
    "backend_for",
    "detect_images",
    "input_shape",
    "prepare_image",
    "resolve_source",
    "run",
]
