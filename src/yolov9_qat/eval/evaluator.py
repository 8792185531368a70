"""Backend-agnostic evaluation: a ``predict`` function, a validation set, COCO AP (COCOeval).

Any backend plugs in as ``predict(images) -> predictions``: ``images`` is a float tensor (B, 3, H, W)
in [0, 1]; predictions are the detector's decoded output (B, 4 + nc, A) — a torch tensor or a numpy
array — or, for end-to-end graphs that ran NMS themselves, a list of per-image ``(n, 6)`` detections
``x1, y1, x2, y2, conf, cls`` in input pixels. NMS uses upstream's validation defaults (conf 0.001,
IoU 0.7, 300 detections).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from yolov9_qat.errors import DataError
from yolov9_qat.eval.metrics import MetricAccumulator, plot_pr_curve
from yolov9_qat.eval.nms import non_max_suppression, scale_boxes
from yolov9_qat.utils.boxes import xywh2xyxy
from yolov9_qat.utils.files import atomic_write_text

log = logging.getLogger("yolov9_qat.eval")

Predict = Callable[[torch.Tensor], "torch.Tensor | np.ndarray | list[torch.Tensor]"]


def torch_predictor(
    model: torch.nn.Module, device: torch.device | str = "cpu", half: bool = False
) -> Predict:
    """``predict`` for a PyTorch model (float or fake-quantized) in eval mode."""
    device = torch.device(device)
    model = model.to(device).eval()
    if half:
        model.half()

    def predict(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = images.to(device, non_blocking=True)
            return model(x.half() if half else x).float()

    return predict


def _load_gt(data: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """The data set's COCO-format ground truth (``coco_json`` in data.yaml) and file-name -> id."""
    path = data.get("coco_json")
    if not path:
        return None, {}
    path = Path(path)
    if not path.is_absolute():
        path = Path(data.get("path", ".")) / path
    if not path.is_file():
        raise DataError(f"coco_json {path} named in the data set's YAML does not exist")
    gt = json.loads(path.read_text())
    ids: dict[str, int] = {}
    for im in gt.get("images", []):
        name = Path(im["file_name"]).name
        ids[name] = im["id"]
        ids.setdefault(Path(name).stem, im["id"])
    return gt, ids


class Evaluator:
    """Runs validation for one data set; reusable across models and backends.

    Args:
        data: a loaded data set description (:func:`yolov9_qat.data.config.load_data_yaml`).
        loader: the validation DataLoader (letterboxed, no augmentation).
    """

    def __init__(
        self,
        data: dict[str, Any],
        loader: torch.utils.data.DataLoader,
        conf_thres: float = 0.001,
        iou_thres: float = 0.7,
        max_det: int = 300,
        split: str = "val",
    ) -> None:
        self.data = data
        self.loader = loader
        self.conf_thres, self.iou_thres, self.max_det = conf_thres, iou_thres, max_det
        self.names = list(data["names"])
        #: which images: a split name of the data set, or a description (``for_selection``)
        self.split = split
        # the data set's COCO json describes its val split; other splits get ground truth from labels
        self.gt, self._ids = _load_gt(data) if split == "val" else (None, {})
        self.class_map = data.get("category_ids")
        #: COCO-format detections of the last :meth:`run` (upstream ``--save-json`` layout)
        self.coco_detections: list[dict[str, Any]] = []

    @classmethod
    def for_data(
        cls,
        data: dict[str, Any],
        imgsz: int,
        batch_size: int = 32,
        workers: int = 2,
        split: str = "val",
        cache_images: bool = False,
        rect: bool = False,
        pad: float = 0.5,
        **kw: Any,
    ) -> Evaluator:
        """An evaluator over one split of ``data``.

        ``rect=True`` is upstream ``val.py``'s input for PyTorch models: images sorted by aspect ratio,
        each batch letterboxed to the smallest multiple of 32 that fits with ``pad`` strides of margin
        (a 160 px square image is scored at 192 x 192). ``rect=False`` scores every image at
        ``imgsz x imgsz``, what a static-shape engine takes; comparisons between backends use one mode.
        """
        from yolov9_qat.data.dataset import create_dataloader

        if not data.get(split):
            raise DataError(f"the data set has no {split!r} split")
        loader, _ = create_dataloader(
            data[split],
            imgsz=imgsz,
            batch_size=batch_size,
            stride=32,
            augment=False,
            workers=workers,
            shuffle=False,
            cache_images=cache_images,
            prefix=f"{split}: ",
            rect=rect,
            pad=pad,
        )
        return cls(data, loader, split=split, **kw)

    @classmethod
    def for_selection(
        cls, data: dict[str, Any], imgsz: int, batch_size: int = 32, workers: int = 2, **kw: Any
    ) -> Evaluator:
        """An evaluator over the selection split (:func:`~yolov9_qat.data.dataset.selection_split`):
        the images a best epoch is picked on, disjoint from the reported ``val`` images."""
        from yolov9_qat.data.dataset import create_dataloader, selection_split

        source, what = selection_split(data)
        loader, _ = create_dataloader(
            source, imgsz=imgsz, batch_size=batch_size, stride=32, augment=False, workers=workers,
            shuffle=False, prefix="select: ",
        )  # fmt: skip
        return cls(data, loader, split=what, **kw)

    def _image_id(self, path: str, fallback: int) -> int:
        if not self._ids:
            return fallback
        name = Path(path).name
        if name in self._ids:
            return self._ids[name]
        if Path(name).stem in self._ids:
            return self._ids[Path(name).stem]
        raise DataError(f"image {name} is not in the data set's coco_json")

    def run(
        self,
        predict: Predict,
        progress: bool = True,
        desc: str = "val",
        plot_dir: str | Path | None = None,
        save_txt: str | Path | None = None,
        save_conf: bool = False,
    ) -> dict[str, Any]:
        """Evaluate; returns ``AP``, ``AP50``, ``precision``, ``recall``, ``per_class``, ``speed_ms`` ...

        ``save_txt``: a folder that gets one ``<image stem>.txt`` per image with its detections as
        upstream ``val.py --save-txt`` writes them (``cls cx cy w h`` normalised to the original image,
        then the score with ``save_conf``). The COCO-format detections are kept in
        :attr:`coco_detections` (see :func:`write_coco_json`).
        """
        acc = MetricAccumulator(class_map=self.class_map, nc=len(self.names))
        txt_dir = Path(save_txt) if save_txt is not None else None
        if txt_dir is not None:
            txt_dir.mkdir(parents=True, exist_ok=True)
        t_pred = t_nms = 0.0
        n_seen = 0
        for imgs, targets, paths, shapes in tqdm(self.loader, desc=desc, disable=not progress, leave=False):
            b, _, h, w = imgs.shape
            x = imgs.float() / 255
            t0 = time.perf_counter()
            pred = predict(x)
            t1 = time.perf_counter()
            if isinstance(pred, (list, tuple)):  # end-to-end: NMS ran inside the graph
                dets = [torch.as_tensor(d).float().cpu().reshape(-1, 6)[: self.max_det] for d in pred]
            else:
                pred = torch.as_tensor(pred).float().cpu()
                dets = non_max_suppression(pred, self.conf_thres, self.iou_thres, max_det=self.max_det)
            t_nms += time.perf_counter() - t1
            t_pred += t1 - t0
            targets = targets.cpu()
            for si in range(b):
                (h0, w0), ratio_pad = shapes[si]
                det = dets[si]
                if len(det):
                    det = det.clone()
                    det[:, :4] = torch.as_tensor(scale_boxes((h, w), det[:, :4], (h0, w0), ratio_pad))
                t = targets[targets[:, 0] == si]
                boxes = xywh2xyxy(t[:, 2:6] * torch.tensor([w, h, w, h]))
                boxes = torch.as_tensor(scale_boxes((h, w), boxes, (h0, w0), ratio_pad)).reshape(-1, 4)
                labels = torch.cat((t[:, 1:2], boxes), 1)
                acc.update(self._image_id(paths[si], n_seen), det, labels, image_shape=(h0, w0))
                if txt_dir is not None:
                    write_txt(txt_dir / f"{Path(paths[si]).stem}.txt", det, (h0, w0), save_conf)
                n_seen += 1
        if n_seen == 0:
            raise DataError("the validation set is empty")
        self.coco_detections = acc.coco_detections
        result = acc.compute(self.gt)
        result["speed_ms"] = {"inference": 1e3 * t_pred / n_seen, "nms": 1e3 * t_nms / n_seen}
        if plot_dir is not None and acc.pr_result is not None:
            plot_pr_curve(acc.pr_result, self.names, Path(plot_dir) / "PR_curve.png")
        return result


def write_txt(path: Path, det: torch.Tensor, shape: tuple[int, int], save_conf: bool = False) -> None:
    """One image's detections ``(n, 6)`` (original pixels) as upstream's ``--save-txt`` label file."""
    h0, w0 = shape
    lines = []
    for x1, y1, x2, y2, conf, cls in det.tolist():
        row = [int(cls), (x1 + x2) / 2 / w0, (y1 + y2) / 2 / h0, (x2 - x1) / w0, (y2 - y1) / h0]
        if save_conf:
            row.append(conf)
        lines.append(" ".join(f"{v:g}" for v in row))
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def write_coco_json(path: str | Path, detections: list[dict[str, Any]]) -> Path:
    """COCO results JSON (``image_id, category_id, bbox [x, y, w, h], score``), upstream's
    ``<weights>_predictions.json`` layout, written atomically."""
    return atomic_write_text(path, json.dumps(detections))


def format_metrics(result: dict[str, Any], names: list[str] | None = None, per_class: bool = False) -> str:
    """The upstream-style table: all classes, then optionally one row per class."""
    lines = [f"{'Class':>16}{'Images':>10}{'Instances':>11}{'P':>9}{'R':>9}{'AP50':>9}{'AP':>9}"]
    row = "{:>16}{:>10}{:>11}{:>9.4f}{:>9.4f}{:>9.4f}{:>9.4f}"
    lines.append(
        row.format(
            "all",
            result.get("n_images", 0),
            result.get("n_instances", 0),
            result["precision"],
            result["recall"],
            result["AP50"],
            result["AP"],
        )
    )
    if per_class:
        for c, r in sorted(result.get("per_class", {}).items(), key=lambda kv: int(kv[0])):
            name = names[int(c)] if names and int(c) < len(names) else str(c)
            lines.append(row.format(name, r["images"], r["instances"], r["P"], r["R"], r["AP50"], r["AP"]))
    return "\n".join(lines)
