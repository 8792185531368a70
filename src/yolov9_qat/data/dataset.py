"""YOLO-format detection data set: image discovery, verified and cached labels, augmentation, loaders.

Labels are upstream YOLO text files, one object per row: ``class cx cy w h`` normalised to the image
(``class x1 y1 x2 y2 ... xn yn`` polygons, as in upstream YOLOv9's COCO labels, become their bounding
box). Every image and label file is checked once; the result is cached beside the labels folder in
``<labels dir>.cache`` (an ``.npz`` archive, read without pickle) keyed by the files' paths, sizes and
modification times.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torch.utils.data.distributed import DistributedSampler

from yolov9_qat.data.augment import (
    augment_hsv,
    letterbox,
    merge_hyp,
    mixup,
    pixel_augment,
    random_perspective,
    xywhn2xyxy,
    xyxy2xywhn,
)
from yolov9_qat.data.config import IMG_FORMATS, img2label_paths
from yolov9_qat.errors import DataError
from yolov9_qat.utils.files import atomic_save

LOGGER = logging.getLogger("yolov9_qat.data")

#: Bump when the verification rules or the cache layout change: older caches are then rebuilt.
CACHE_VERSION = 1
#: Threads that verify files / fill the image cache (decoders release the GIL).
NUM_THREADS = max(1, min(8, os.cpu_count() or 1))
#: Coordinates may exceed [0, 1] by this much and are clipped; rows beyond it are dropped.
COORD_TOLERANCE = 0.01
#: Smallest image side accepted, in pixels.
MIN_IMAGE_SIDE = 10
#: First word of every augmentation stream's seed (``b"aug"``): without it the stream of (seed 0,
#: epoch 0, image i) was ``default_rng([0, 0, i])``, the very stream that rendered synthetic train image
#: i, so with the default seeds the first epoch's flips, scales and mosaics followed each image's content
AUGMENT_STREAM = int.from_bytes(b"aug", "big")

_OK, _CORRUPT, _TRUNCATED = 0, 1, 2
_PIL_FORMATS = {"BMP", "JPEG", "MPO", "PNG", "TIFF", "WEBP"}
_JPEG_SUFFIXES = {".jpg", ".jpeg"}

#: Counters kept in ``YoloDataset.stats``, in the order of the summary line.
STAT_KEYS: tuple[str, ...] = (
    "images",  # image files found
    "usable",  # images in the data set after every filter
    "boxes",  # labelled objects in the usable images
    "found",  # images with a label file
    "missing",  # images without a label file (kept, no objects)
    "empty",  # images with an empty label file (kept, no objects)
    "corrupt",  # unreadable images (skipped)
    "truncated",  # truncated images (skipped)
    "rows_bad_columns",  # rows dropped: neither 5 columns nor a polygon
    "rows_not_number",  # rows dropped: a value is not a number
    "rows_nonfinite",  # rows dropped: NaN or inf
    "rows_bad_class",  # rows dropped: class negative or fractional
    "rows_out_of_bounds",  # rows dropped: coordinates outside [0, 1] beyond the tolerance
    "rows_zero_size",  # rows dropped: zero or negative width / height
    "rows_clipped",  # rows repaired: coordinates slightly outside [0, 1] clipped
    "duplicates",  # duplicate rows removed
    "segments",  # polygon rows converted to boxes
    "class_out_of_range",  # rows dropped: class >= nc (only when nc is given)
    "min_items_dropped",  # images dropped: fewer objects than min_items
    "verified",  # files checked while building this data set (0 when the cache was used)
)

#: label-row problems whose rows are dropped
_DROPPED_ROW_KEYS = (
    "rows_bad_columns",
    "rows_not_number",
    "rows_nonfinite",
    "rows_bad_class",
    "rows_out_of_bounds",
    "rows_zero_size",
)
#: everything counted per label file (dropped rows, repaired rows, removed duplicates, polygon rows)
_ROW_KEYS = (*_DROPPED_ROW_KEYS, "rows_clipped", "duplicates", "segments")

_SUMMARY_WORDS = {
    "missing": "without a label file",
    "empty": "with an empty label file",
    "corrupt": "corrupt images skipped",
    "truncated": "truncated images skipped",
    "rows_bad_columns": "wrong column count",
    "rows_not_number": "not a number",
    "rows_nonfinite": "NaN/inf",
    "rows_bad_class": "bad class id",
    "rows_out_of_bounds": "outside [0, 1]",
    "rows_zero_size": "zero size",
    "class_out_of_range": "class >= nc",
    "duplicates": "duplicate rows removed",
    "rows_clipped": "rows clipped to [0, 1]",
    "segments": "polygons converted to boxes",
    "min_items_dropped": "images below min_items dropped",
}


# ----------------------------------------------------------------------------------------------------------
# Image discovery


def _has_image_suffix(name: str) -> bool:
    return os.path.splitext(name)[1][1:].lower() in IMG_FORMATS


def collect_image_files(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Absolute, sorted, de-duplicated image paths from folders (recursive), list files and image paths.

    A ``.txt`` list file holds one image path per line; relative lines are relative to the list file's
    folder. Raises :class:`DataError` for a source that does not exist or is not one of those.
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not items:
        raise DataError("no image source given (an empty list)")
    files: list[str] = []
    for item in items:
        p = Path(os.path.expanduser(os.fspath(item)))
        if p.is_dir():
            for root, dirs, names in os.walk(p, followlinks=True):
                dirs.sort()
                files.extend(os.path.join(root, n) for n in names if _has_image_suffix(n))
        elif p.is_file() and p.suffix.lower() == ".txt":
            try:
                lines = p.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise DataError(f"image list {p} cannot be read: {e}") from e
            parent = p.parent
            for line in lines:
                line = line.strip()
                if not line or line.startswith("#") or not _has_image_suffix(line):
                    continue
                q = Path(os.path.expanduser(line))
                files.append(str(q if q.is_absolute() else parent / q))
        elif p.is_file() and _has_image_suffix(p.name):
            files.append(str(p))
        elif not p.exists():
            raise DataError(f"image source {p} does not exist")
        else:
            raise DataError(
                f"image source {p} is not a folder, an image or a .txt list of images "
                f"(image types: {', '.join(IMG_FORMATS)})"
            )
    return sorted({os.path.abspath(f) for f in files})


#: Without a ``select:`` entry in data.yaml the selection split is this fraction of train (at most
#: :data:`SELECT_MAX` images): the last ones by file name, a fixed slice whatever the seed.
SELECT_FRACTION, SELECT_MAX = 0.1, 500


def selection_split(data: dict[str, Any]) -> tuple[str | list[str], str]:
    """The images anything chosen by a score (the best QAT epoch) is chosen on, never the reported
    ``val`` images: data.yaml's ``select:`` when it has one, else a fixed slice at the end of ``train``.

    Returns ``(source for create_dataloader, a description for summaries)``.
    """
    if data.get("select"):
        return data["select"], "select"
    files = collect_image_files(data["train"])
    n = min(SELECT_MAX, max(1, round(SELECT_FRACTION * len(files))))
    return files[-n:], f"train[-{n}:] (the last {n} of {len(files)} training images by file name)"


# ----------------------------------------------------------------------------------------------------------
# Verification


def _check_image(path: str) -> tuple[int, tuple[int, int], str]:
    """(status, (h, w) after EXIF orientation, message) of one image file, never raising."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        return _CORRUPT, (0, 0), f"{path}: cannot be read ({e.strerror or e})"
    if size == 0:
        return _CORRUPT, (0, 0), f"{path}: zero-byte file"
    orientation = 1
    try:
        with Image.open(path) as im:
            fmt = im.format or "?"
            w, h = im.size
            if fmt not in _PIL_FORMATS:
                return _CORRUPT, (0, 0), f"{path}: unsupported image format {fmt}"
            if fmt in ("JPEG", "MPO"):
                with open(path, "rb") as f:
                    f.seek(max(0, size - 64))
                    if b"\xff\xd9" not in f.read():
                        return _TRUNCATED, (0, 0), f"{path}: truncated JPEG (no end-of-image marker)"
                with contextlib.suppress(Exception):  # OpenCV applies the EXIF rotation of JPEGs
                    orientation = im.getexif().get(0x0112, 1)
                im.draft("L", (max(1, w // 8), max(1, h // 8)))  # decode at 1/8 scale: checks all data
                im.load()
            else:
                im.verify()  # chunk structure and checksums, without decoding
    except Exception as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        status = _TRUNCATED if "truncat" in msg.lower() else _CORRUPT
        return status, (0, 0), f"{path}: {'truncated' if status == _TRUNCATED else 'corrupt'} image ({msg})"
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    if w < MIN_IMAGE_SIDE or h < MIN_IMAGE_SIDE:
        return _CORRUPT, (h, w), f"{path}: image is {w}x{h}, smaller than {MIN_IMAGE_SIDE} pixels"
    return _OK, (h, w), ""


def parse_label_text(text: str) -> tuple[np.ndarray, dict[str, int]]:
    """Parse and repair the rows of a YOLO label file.

    Returns ``(labels (n, 5) float32 [cls, cx, cy, w, h], counts)`` where ``counts`` has the
    ``rows_*`` / ``duplicates`` / ``segments`` keys of :data:`STAT_KEYS`. Rows are dropped when they have
    the wrong number of columns, a value that is not a finite number, a negative or fractional class,
    zero or negative size, or coordinates outside [0, 1] by more than :data:`COORD_TOLERANCE`; a smaller
    excess is clipped. Exact duplicate rows are removed (the first is kept).
    """
    counts = dict.fromkeys(_ROW_KEYS, 0)
    rows: list[tuple[float, float, float, float, float]] = []
    tol = COORD_TOLERANCE
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        n = len(parts)
        if n != 5 and not (n >= 7 and n % 2 == 1):
            counts["rows_bad_columns"] += 1
            continue
        try:
            vals = [float(v) for v in parts]
        except ValueError:
            counts["rows_not_number"] += 1
            continue
        if not all(math.isfinite(v) for v in vals):
            counts["rows_nonfinite"] += 1
            continue
        c = vals[0]
        if c < 0 or c != int(c):
            counts["rows_bad_class"] += 1
            continue
        if n == 5:
            cx, cy, bw, bh = vals[1:]
            if bw <= 0 or bh <= 0:
                counts["rows_zero_size"] += 1
                continue
            if not all(-tol <= v <= 1 + tol for v in (cx, cy, bw, bh)):
                counts["rows_out_of_bounds"] += 1
                continue
            x1, y1, x2, y2 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
        else:
            xs, ys = vals[1::2], vals[2::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
            counts["segments"] += 1
        if x1 < -tol or y1 < -tol or x2 > 1 + tol or y2 > 1 + tol:
            counts["rows_out_of_bounds"] += 1
            continue
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)
        if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
            counts["rows_zero_size"] += 1
            continue
        if max(cx1 - x1, cy1 - y1, x2 - cx2, y2 - cy2) > 1e-5:
            counts["rows_clipped"] += 1
        rows.append((c, (cx1 + cx2) / 2, (cy1 + cy2) / 2, cx2 - cx1, cy2 - cy1))
    labels = np.array(rows, dtype=np.float32).reshape(-1, 5)
    if len(labels) > 1:
        _, first = np.unique(labels, axis=0, return_index=True)
        if len(first) < len(labels):
            counts["duplicates"] += len(labels) - len(first)
            labels = labels[np.sort(first)]
    return labels, counts


def verify_image_label(
    im_file: str, lb_file: str
) -> tuple[int, tuple[int, int], np.ndarray, dict[str, int], str]:
    """Check one image and its label file, never raising.

    Returns ``(status, (h, w), labels (n, 5), counts, message)``; ``status`` is 0 (usable), 1 (corrupt)
    or 2 (truncated); ``counts`` holds the per-file ``missing`` / ``empty`` / ``found`` flags and the
    row counters of :func:`parse_label_text`.
    """
    status, shape, msg = _check_image(im_file)
    empty_labels = np.zeros((0, 5), np.float32)
    counts = {"found": 0, "missing": 0, "empty": 0}
    if status != _OK:
        return status, shape, empty_labels, counts, msg
    try:
        with open(lb_file, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        counts["missing"] = 1
        return status, shape, empty_labels, counts, ""
    except OSError as e:
        counts["missing"] = 1
        return (
            status,
            shape,
            empty_labels,
            counts,
            f"{lb_file}: label file cannot be read ({e.strerror or e})",
        )
    counts["found"] = 1
    if not text.strip():
        counts["empty"] = 1
        return status, shape, empty_labels, counts, ""
    labels, row_counts = parse_label_text(text)
    counts.update(row_counts)
    bad = sum(v for k, v in row_counts.items() if k not in ("segments", "rows_clipped"))
    if bad:
        msg = f"{lb_file}: {bad} row(s) dropped or de-duplicated"
    return status, shape, labels, counts, msg


# ----------------------------------------------------------------------------------------------------------
# Label cache


def _files_hash(files: Iterable[str]) -> str:
    h = hashlib.sha256()
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{f}\0-\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _join(strings: Sequence[str]) -> np.ndarray:
    return np.frombuffer("\0".join(strings).encode("utf-8", "surrogateescape"), dtype=np.uint8)


def _split(buf: np.ndarray, n: int) -> list[str]:
    if n == 0:
        return []
    return buf.tobytes().decode("utf-8", "surrogateescape").split("\0")


def label_cache_path(label_files: Sequence[str]) -> Path:
    """``<labels dir>.cache`` for the folder of the first label file."""
    d = Path(label_files[0]).parent
    return d.parent / f"{d.name}.cache"


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]

    atomic_save(path, writer)


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


# ----------------------------------------------------------------------------------------------------------
# Data set


class YoloDataset(Dataset):
    """A YOLO-format detection data set.

    ``__getitem__`` returns ``(image, labels, path, shapes)``: ``image`` a CHW uint8 RGB tensor;
    ``labels`` an ``(n, 6)`` float tensor ``[0, cls, cx, cy, w, h]`` normalised to the returned image
    (column 0 becomes the index in the batch in :meth:`collate_fn`); ``path`` the image path; ``shapes``
    ``((h0, w0), ((gain_h, gain_w), (pad_w, pad_h)))`` such that ``x_original = (x - pad_w) / gain_w``,
    or ``None`` for a mosaic (which has no original image).

    Evaluation (``augment=False``): the long side is resized to ``imgsz`` (INTER_AREA when shrinking,
    INTER_LINEAR when enlarging), then letterboxed with value 114 to ``imgsz x imgsz``, or with
    ``rect=True`` to the batch's shape (images sorted by aspect ratio, each batch padded to the smallest
    multiple of ``stride`` that fits with ``pad`` strides of margin, as upstream).

    Training (``augment=True``): 4-image mosaic (probability ``hyp['mosaic']``, see :meth:`close_mosaic`),
    random affine/perspective, mixup of two mosaics, rare blur / grey / CLAHE
    (:data:`~yolov9_qat.data.augment.PIXEL_AUG_P`), HSV gains and flips, with ``hyp`` keys as upstream's
    ``hyp.scratch-high.yaml`` (missing keys take those values). Each sample's randomness is its own
    generator, a function of (``seed``, epoch, index) only (:meth:`_get_rng`; ``seed`` None is 0), so
    it does not depend on which worker draws the sample.

    ``self.labels[i]`` is an ``(n, 5)`` float32 array ``[cls, cx, cy, w, h]`` normalised to the original
    image, ``self.shapes[i]`` the original ``(h, w)``; ``self.stats`` counts what the verification found
    (:data:`STAT_KEYS`) and ``self.cache_status`` says what happened to the label cache.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        imgsz: int = 640,
        augment: bool = False,
        hyp: dict[str, Any] | None = None,
        rect: bool = False,
        batch_size: int = 16,
        stride: int = 32,
        pad: float = 0.5,
        min_items: int = 0,
        cache_labels: bool = True,
        prefix: str = "",
        cache_images: bool = False,
        nc: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.source = source
        self.img_size = int(imgsz)
        self.augment = bool(augment)
        self.hyp = merge_hyp(hyp)
        self.rect = bool(rect)
        self.batch_size = max(1, int(batch_size))
        self.stride = int(stride)
        self.pad = float(pad)
        self.prefix = prefix
        self._seed = 0 if seed is None else int(seed)
        # The mosaic flag and the epoch live in shared memory, so that close_mosaic() and set_epoch()
        # reach DataLoader workers that are already running.
        self._mosaic_flag = torch.ones(1, dtype=torch.uint8)
        self._epoch = torch.zeros(1, dtype=torch.int64)
        try:
            self._mosaic_flag.share_memory_()
            self._epoch.share_memory_()
        except (RuntimeError, OSError):  # pragma: no cover - no shared memory: workers keep their copy
            LOGGER.warning(
                "%sshared memory unavailable: close_mosaic() and set_epoch() will not reach running workers",
                prefix,
            )

        im_files = collect_image_files(source)
        if not im_files:
            raise DataError(
                f"{prefix}no images found in {self._source_str()} (image types: {', '.join(IMG_FORMATS)})"
            )
        lb_files = img2label_paths(im_files)
        self.cache_path: Path | None = label_cache_path(lb_files) if cache_labels else None
        status, shapes, labels, stats, msgs = self._load_or_verify(im_files, lb_files)

        keep = status == _OK
        labels = [lab for lab, k in zip(labels, keep, strict=True) if k]
        im_files = [f for f, k in zip(im_files, keep, strict=True) if k]
        lb_files = [f for f, k in zip(lb_files, keep, strict=True) if k]
        shapes = shapes[keep]

        stats["class_out_of_range"] = 0
        if nc is not None:
            for i, lab in enumerate(labels):
                bad = lab[:, 0] >= nc
                if bad.any():
                    stats["class_out_of_range"] += int(bad.sum())
                    labels[i] = lab[~bad]
        stats["min_items_dropped"] = 0
        if min_items > 0:
            enough = np.array([len(lab) >= min_items for lab in labels], dtype=bool)
            stats["min_items_dropped"] = int((~enough).sum())
            labels = [lab for lab, k in zip(labels, enough, strict=True) if k]
            im_files = [f for f, k in zip(im_files, enough, strict=True) if k]
            lb_files = [f for f, k in zip(lb_files, enough, strict=True) if k]
            shapes = shapes[enough]

        stats["usable"] = len(im_files)
        stats["boxes"] = int(sum(len(lab) for lab in labels))
        self.stats: dict[str, int] = {k: int(stats.get(k, 0)) for k in STAT_KEYS}
        self.messages = msgs
        if not im_files:
            raise DataError(f"{prefix}no usable images in {self._source_str()} ({self._problems_str()})")

        self.im_files: list[str] = im_files
        self.label_files: list[str] = lb_files
        self.labels: list[np.ndarray] = labels
        self.shapes: np.ndarray = shapes.astype(np.int64).reshape(-1, 2)
        self.n = len(im_files)
        self.batch_index = np.arange(self.n) // self.batch_size
        self.batch_shapes: np.ndarray | None = None
        if self.rect:
            self._init_rect()

        for m in msgs[:20]:
            LOGGER.debug("%s%s", prefix, m)
        self._log_summary()

        self._ims: list[np.ndarray | None] | None = None
        if cache_images:
            self.cache_images()

    # ------------------------------------------------------------------------------------------------------
    # construction helpers

    def _source_str(self) -> str:
        src = self.source
        if isinstance(src, (str, os.PathLike)):
            return os.fspath(src)
        names = [os.fspath(s) for s in src]
        if len(names) > 3:
            return f"{', '.join(names[:3])} and {len(names) - 3} more"
        return ", ".join(names)

    def _problems_str(self) -> str:
        s = self.stats
        parts = [f"{s['images']} image files found"]
        for k in ("corrupt", "truncated", "min_items_dropped"):
            if s[k]:
                parts.append(f"{s[k]} {_SUMMARY_WORDS[k]}")
        if self.messages:
            parts.append(f"first problem: {self.messages[0]}")
        return ", ".join(parts)

    def _load_or_verify(
        self, im_files: list[str], lb_files: list[str]
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], dict[str, int], list[str]]:
        n = len(im_files)
        h = _files_hash([*im_files, *lb_files])
        self.cache_status = "disabled"
        if self.cache_path is not None:
            cache = _read_cache(self.cache_path) if self.cache_path.is_file() else None
            if cache is not None:
                try:
                    ok = (
                        int(cache["version"]) == CACHE_VERSION
                        and str(cache["hash"]) == h
                        and _split(cache["im_files"], n) == im_files
                    )
                    if ok:
                        nl = cache["nlabels"].astype(np.int64)
                        labels = np.split(cache["labels"].astype(np.float32), np.cumsum(nl)[:-1])
                        stats = json.loads(str(cache["stats"]))
                        msgs = [m for m in _split(cache["msgs"], 1) if m]
                        stats["verified"] = 0
                        self.cache_status = "loaded"
                        return cache["status"], cache["shapes"], labels, stats, msgs
                except (KeyError, ValueError, TypeError):
                    pass
                self.cache_status = "rebuilt"  # stale: another version, other files, or unreadable
            else:
                self.cache_status = "rebuilt" if self.cache_path.exists() else "created"

        status = np.zeros(n, np.int8)
        shapes = np.zeros((n, 2), np.int64)
        labels: list[np.ndarray] = []
        stats = dict.fromkeys(STAT_KEYS, 0)
        msgs: list[str] = []
        with ThreadPoolExecutor(NUM_THREADS) as pool:
            results = pool.map(verify_image_label, im_files, lb_files)
            for i, (st, shape, lab, counts, msg) in enumerate(results):
                status[i] = st
                shapes[i] = shape
                labels.append(lab)
                for k, v in counts.items():
                    stats[k] += v
                if st == _CORRUPT:
                    stats["corrupt"] += 1
                elif st == _TRUNCATED:
                    stats["truncated"] += 1
                if msg:
                    msgs.append(msg)
        stats["images"] = n
        stats["verified"] = n

        if self.cache_path is not None:
            self._save_cache(h, im_files, status, shapes, labels, stats, msgs)
        return status, shapes, labels, stats, msgs

    def _save_cache(
        self,
        h: str,
        im_files: list[str],
        status: np.ndarray,
        shapes: np.ndarray,
        labels: list[np.ndarray],
        stats: dict[str, int],
        msgs: list[str],
    ) -> None:
        assert self.cache_path is not None
        folder = self.cache_path.parent
        if not folder.is_dir():
            self.cache_status = "not written (no labels folder)"
            return
        arrays = {
            "version": np.array(CACHE_VERSION, np.int64),
            "hash": np.array(h),
            "im_files": _join(im_files),
            "status": status,
            "shapes": shapes,
            "nlabels": np.array([len(x) for x in labels], np.int64),
            "labels": np.concatenate(labels, 0) if labels else np.zeros((0, 5), np.float32),
            "stats": np.array(json.dumps({k: v for k, v in stats.items() if k != "verified"})),
            "msgs": _join(msgs),
        }
        try:
            _write_cache(self.cache_path, arrays)
        except OSError as e:
            LOGGER.warning(
                "%slabel cache not saved: %s is not writable (%s)", self.prefix, folder, e.strerror or e
            )
            self.cache_status = "not written (folder not writable)"

    def _init_rect(self) -> None:
        """Sort by aspect ratio and give each batch the smallest stride-multiple shape that fits."""
        ar = self.shapes[:, 0] / self.shapes[:, 1]  # h / w
        order = ar.argsort(kind="stable")
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes = self.shapes[order]
        ar = ar[order]
        nb = int(self.batch_index[-1]) + 1
        shapes = np.ones((nb, 2))
        for b in range(nb):
            ari = ar[self.batch_index == b]
            lo, hi = ari.min(), ari.max()
            if hi < 1:
                shapes[b] = (hi, 1.0)
            elif lo > 1:
                shapes[b] = (1.0, 1.0 / lo)
        self.batch_shapes = (np.ceil(shapes * self.img_size / self.stride + self.pad) * self.stride).astype(
            np.int64
        )

    def _log_summary(self) -> None:
        s = self.stats
        head = f"{s['images']} images, {s['usable']} usable, {s['boxes']} boxes"
        notes = [f"{s[k]} {_SUMMARY_WORDS[k]}" for k in ("missing", "empty", "corrupt", "truncated") if s[k]]
        row_keys = (*_DROPPED_ROW_KEYS, "class_out_of_range")
        dropped = sum(s[k] for k in row_keys)
        if dropped:
            detail = ", ".join(f"{s[k]} {_SUMMARY_WORDS[k]}" for k in row_keys if s[k])
            notes.append(f"{dropped} label rows dropped ({detail})")
        notes += [f"{s[k]} {_SUMMARY_WORDS[k]}" for k in ("duplicates", "rows_clipped", "segments") if s[k]]
        if s["min_items_dropped"]:
            notes.append(f"{s['min_items_dropped']} {_SUMMARY_WORDS['min_items_dropped']}")
        status = "stale cache rebuilt" if self.cache_status == "rebuilt" else self.cache_status
        cache = f"label cache: {status}"
        if self.cache_path is not None:
            cache += f" ({self.cache_path})"
        line = f"{self.prefix}{head}" + (f"; {', '.join(notes)}" if notes else "") + f"; {cache}"
        problems = dropped + s["corrupt"] + s["truncated"] + s["duplicates"]
        LOGGER.log(logging.WARNING if problems else logging.INFO, line)

    # ------------------------------------------------------------------------------------------------------
    # images

    def cache_images(self) -> None:
        """Decode and resize every image once and keep it in RAM (what :meth:`load_image` returns)."""
        ims: list[np.ndarray | None] = [None] * self.n
        self._ims = None
        with ThreadPoolExecutor(NUM_THREADS) as pool:
            for i, (im, _, _) in enumerate(pool.map(self.load_image, range(self.n))):
                ims[i] = im
        self._ims = ims
        nbytes = sum(im.nbytes for im in ims if im is not None)
        LOGGER.info("%scached %d images in RAM (%.1f MB)", self.prefix, self.n, nbytes / 1e6)

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image ``i`` as BGR uint8 with its long side resized to ``imgsz``: ``(img, (h0, w0), (h, w))``."""
        h0, w0 = (int(v) for v in self.shapes[i])
        if self._ims is not None:
            im = self._ims[i]
            if im is not None:
                return im, (h0, w0), im.shape[:2]
        path = self.im_files[i]
        r = self.img_size / max(h0, w0)
        flag = cv2.IMREAD_COLOR
        reduced = False
        if self.augment and r < 0.5 and os.path.splitext(path)[1].lower() in _JPEG_SUFFIXES:
            # Training only: let libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling), far cheaper.
            for factor, f in (
                (8, cv2.IMREAD_REDUCED_COLOR_8),
                (4, cv2.IMREAD_REDUCED_COLOR_4),
                (2, cv2.IMREAD_REDUCED_COLOR_2),
            ):
                if r * factor <= 1.0:
                    flag, reduced = f, True
                    break
        im = cv2.imread(path, flag)
        if im is None:
            raise DataError(
                f"{self.prefix}image {path} cannot be decoded (changed since the label cache was built?)"
            )
        if not reduced:
            h0, w0 = im.shape[:2]
            r = self.img_size / max(h0, w0)
        nh, nw = max(1, round(h0 * r)), max(1, round(w0 * r))
        if im.shape[:2] != (nh, nw):
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (nw, nh), interpolation=interp)
        return im, (h0, w0), (nh, nw)

    def load_mosaic(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """4 images around a random centre on a ``2s x 2s`` canvas, then randomly warped to ``s x s``.

        Returns ``(img, labels (n, 5) [cls, x1, y1, x2, y2] pixels)``.
        """
        s = self.img_size
        canvas = np.full((2 * s, 2 * s, 3), 114, np.uint8)
        xc, yc = (int(v) for v in rng.uniform(s // 2, 2 * s - s // 2, 2))
        indices = np.concatenate(([index], rng.integers(0, self.n, 3)))
        rng.shuffle(indices)
        parts = []
        for q, idx in enumerate(indices.tolist()):
            img, _, (h, w) = self.load_image(idx)
            x0 = xc - w if q % 2 == 0 else xc  # quadrants: top-left, top-right, bottom-left, bottom-right
            y0 = yc - h if q < 2 else yc
            ax1, ay1, ax2, ay2 = max(x0, 0), max(y0, 0), min(x0 + w, 2 * s), min(y0 + h, 2 * s)
            canvas[ay1:ay2, ax1:ax2] = img[ay1 - y0 : ay2 - y0, ax1 - x0 : ax2 - x0]
            lab = self.labels[idx]
            if len(lab):
                boxes = xywhn2xyxy(lab[:, 1:5], w, h, x0, y0)
                parts.append(np.concatenate((lab[:, :1], boxes), 1))
        labels = np.concatenate(parts, 0) if parts else np.zeros((0, 5), np.float32)
        np.clip(labels[:, 1:5], 0, 2 * s, out=labels[:, 1:5])
        return self._perspective(canvas, labels, rng, border=(-(s // 2), -(s // 2)))

    def _perspective(
        self, img: np.ndarray, labels: np.ndarray, rng: np.random.Generator, border: tuple[int, int] = (0, 0)
    ) -> tuple[np.ndarray, np.ndarray]:
        """Random affine / perspective with this data set's hyper-parameters."""
        hyp = self.hyp
        return random_perspective(
            img,
            labels,
            degrees=hyp["degrees"],
            translate=hyp["translate"],
            scale=hyp["scale"],
            shear=hyp["shear"],
            perspective=hyp["perspective"],
            border=border,
            rng=rng,
        )

    # ------------------------------------------------------------------------------------------------------
    # sampling

    @property
    def mosaic(self) -> bool:
        """Whether training samples are mosaics (``augment`` on, ``rect`` off, not closed)."""
        return self.augment and not self.rect and bool(self._mosaic_flag[0])

    def close_mosaic(self) -> None:
        """Stop making mosaics (and mixups) from now on, also in DataLoader workers already running."""
        self._mosaic_flag[0] = 0

    def reseed(self, seed: int | None) -> None:
        """Set the base seed of the augmentations (call before the DataLoader starts its workers)."""
        self._seed = 0 if seed is None else int(seed)

    def set_epoch(self, epoch: int) -> None:
        """New augmentations for a new epoch, also in DataLoader workers already running."""
        self._epoch[0] = int(epoch)

    def _get_rng(self, index: int) -> np.random.Generator:
        """The augmentation generator of one sample: a function of (seed, epoch, index) only, so a
        sample looks the same whatever worker draws it, and a resumed run repeats an uninterrupted one.
        :data:`AUGMENT_STREAM` keeps it apart from every other ``default_rng([seed, i, j])`` stream,
        above all the one that rendered synthetic image ``j`` of split ``i``."""
        return np.random.default_rng([AUGMENT_STREAM, self._seed, int(self._epoch[0]), index])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, Any]:
        index = int(index)
        hyp = self.hyp
        rng = self._get_rng(index) if self.augment else None
        shapes: Any = None
        if rng is not None and self.mosaic and rng.random() < hyp["mosaic"]:
            img, labels = self.load_mosaic(index, rng)
            if hyp["mixup"] > 0 and rng.random() < hyp["mixup"]:
                img2, labels2 = self.load_mosaic(int(rng.integers(0, self.n)), rng)
                img, labels = mixup(img, labels, img2, labels2, rng)
        else:
            img, (h0, w0), (h, w) = self.load_image(index)
            if self.rect and self.batch_shapes is not None:
                shape = tuple(int(v) for v in self.batch_shapes[self.batch_index[index]])
            else:
                shape = (self.img_size, self.img_size)
            img, (rw, rh), (padw, padh) = letterbox(img, shape, auto=False, scaleup=self.augment)
            shapes = ((h0, w0), ((h * rh / h0, w * rw / w0), (padw, padh)))
            lab = self.labels[index]
            boxes = xywhn2xyxy(lab[:, 1:5], w * rw, h * rh, padw, padh)
            labels = np.concatenate((lab[:, :1], boxes), 1)
            if rng is not None:
                img, labels = self._perspective(img, labels, rng)

        out_h, out_w = img.shape[:2]
        if len(labels):
            labels = np.concatenate((labels[:, :1], xyxy2xywhn(labels[:, 1:5], out_w, out_h, clip=True)), 1)
        else:
            labels = np.zeros((0, 5), np.float32)
        if rng is not None:
            img = pixel_augment(img, rng)
            img = augment_hsv(img, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"], rng)
            if rng.random() < hyp["flipud"]:
                img = img[::-1]
                labels[:, 2] = 1 - labels[:, 2]
            if rng.random() < hyp["fliplr"]:
                img = img[:, ::-1]
                labels[:, 1] = 1 - labels[:, 1]

        targets = torch.zeros((len(labels), 6), dtype=torch.float32)
        targets[:, 1:] = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))
        chw = np.ascontiguousarray(img.transpose(2, 0, 1)[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(chw), targets, self.im_files[index], shapes

    @staticmethod
    def collate_fn(
        batch: Sequence[tuple[torch.Tensor, torch.Tensor, str, Any]],
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple[Any, ...]]:
        """Stack images, concatenate labels with column 0 set to the index in the batch."""
        imgs, labels, paths, shapes = zip(*batch, strict=True)
        for i, lab in enumerate(labels):
            lab[:, 0] = i
        return torch.stack(imgs, 0), torch.cat(labels, 0), paths, shapes


# ----------------------------------------------------------------------------------------------------------
# Loader


def _worker_init(worker_id: int) -> None:
    cv2.setNumThreads(0)  # the workers are the parallelism; OpenCV threads would oversubscribe
    torch.set_num_threads(1)
    info = get_worker_info()
    if info is not None:
        np.random.seed(info.seed % 2**32)  # only for third-party code: the data set uses its own generator


def create_dataloader(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    imgsz: int,
    batch_size: int,
    stride: int,
    hyp: dict[str, Any] | None = None,
    augment: bool = False,
    workers: int = 2,
    shuffle: bool = False,
    rank: int = -1,
    seed: int = 0,
    cache_images: bool = False,
    min_items: int = 0,
    prefix: str = "",
    rect: bool = False,
    pad: float = 0.5,
    nc: int | None = None,
    world_size: int | None = None,
) -> tuple[DataLoader, YoloDataset]:
    """A :class:`YoloDataset` and its DataLoader.

    ``rank != -1`` uses a :class:`DistributedSampler` over ``world_size`` replicas (default: the
    initialised process group's size; call ``loader.sampler.set_epoch(epoch)`` every epoch). The
    loader's generator is seeded with ``seed + max(rank, 0)``, so shuffling and augmentation repeat for
    a seed, whatever the number of workers (they start afresh every epoch: see below); ``pin_memory`` is on only when CUDA is available.
    ``rect`` (evaluation) keeps the data set's aspect-ratio order, so it turns ``shuffle`` off.
    """
    if rect and shuffle:
        LOGGER.warning("%srect batches need their order: shuffle turned off", prefix)
        shuffle = False
    dataset = YoloDataset(
        source,
        imgsz=imgsz,
        augment=augment,
        hyp=hyp,
        rect=rect,
        batch_size=batch_size,
        stride=stride,
        pad=pad,
        min_items=min_items,
        prefix=prefix,
        cache_images=cache_images,
        nc=nc,
        seed=seed,
    )
    batch_size = min(batch_size, len(dataset))
    workers = max(0, min(int(workers), os.cpu_count() or 1))
    sampler = None
    if rank != -1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(seed + max(rank, 0))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=YoloDataset.collate_fn,
        worker_init_fn=_worker_init,
        generator=generator,
        # not persistent: a persistent iterator skips the base-seed draw that every new iterator takes
        # from ``generator`` before the sampler's, so from epoch 2 on the order would depend on
        # ``workers > 0`` (and a cached record on a flag its key does not hold)
        persistent_workers=False,
    )
    return loader, dataset
