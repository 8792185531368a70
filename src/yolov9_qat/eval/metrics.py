"""Detection metrics: COCO AP by COCO's own evaluation, plus upstream YOLO's precision / recall.

Two measurements are made from the same detections:

* **AP, AP50** come from ``COCOeval`` (bbox), run in memory on a COCO-format ground-truth dict: the
  number COCO's own tool reports, with its crowd handling, area ranges, 101-point interpolation and 100
  detections per image. The engine is faster-coco-eval's C++ port of pycocotools' ``COCOeval`` (5x
  faster on 300 images); ``tests/eval/test_metrics.py`` holds it to pycocotools itself, stat for stat
  and precision for precision, on upstream's own predictions and on hand-built cases.
* **P, R** are reported the way upstream YOLO (v5 / v9) ``val.py`` reports them: detections are
  matched to labels per image (:func:`match_predictions`), per-class precision and recall curves
  are sampled on a 1000-point confidence grid, and P and R are read at the confidence that
  maximises the (smoothed) mean F1 over classes (:func:`ap_per_class`).

:class:`MetricAccumulator` gathers both per image and is backend-agnostic: it takes torch tensors
(on any device) or numpy arrays, so the same code scores PyTorch, ONNX Runtime and TensorRT output.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yolov9_qat.errors import DataError
from yolov9_qat.utils.boxes import box_iou
from yolov9_qat.utils.files import atomic_save

ArrayLike = torch.Tensor | np.ndarray

#: COCO's IoU thresholds 0.50:0.05:0.95, in float64 exactly as ``COCOeval`` builds them.
IOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, 10)

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2.0 has only trapz


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _rows(x: ArrayLike | None, width: int, what: str) -> np.ndarray:
    """``x`` as a float64 ``(n, width)`` array; ``None`` or an empty input gives ``(0, width)``."""
    if x is None:
        return np.zeros((0, width))
    arr = _to_numpy(x).astype(np.float64)
    if arr.size == 0:
        return np.zeros((0, width))
    if arr.ndim != 2 or arr.shape[1] < width:
        raise ValueError(f"{what} must be shaped (n, {width}), got {arr.shape}")
    return arr[:, :width]


# --------------------------------------------------------------------------------------------------
# COCOeval
# --------------------------------------------------------------------------------------------------


def _prepare_gt(gt: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a COCO ground-truth dict with the fields ``COCOeval`` needs filled in.

    Missing ``iscrowd`` becomes 0 and missing ``area`` the box area; annotation ids are renumbered
    when any is missing or repeated (pycocotools silently merges repeated ids). The caller's dict
    is not modified.
    """
    missing = [key for key in ("images", "annotations", "categories") if key not in gt]
    if missing:
        raise DataError(f"COCO ground truth lacks {', '.join(missing)}")
    anns = []
    for ann in gt["annotations"]:
        ann = dict(ann)
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        anns.append(ann)
    ids = [ann.get("id") for ann in anns]
    if None in ids or len(set(ids)) != len(ids):
        for i, ann in enumerate(anns, 1):
            ann["id"] = i
    out = dict(gt)
    out["annotations"] = anns
    return out


def coco_map(
    gt: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    *,
    img_ids: Iterable[int] | None = None,
    per_class: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """Bounding-box AP by ``COCOeval`` (faster-coco-eval's, pycocotools' figures) on an in-memory ground
    truth.

    Args:
        gt: COCO-format ground truth (``images``, ``annotations``, ``categories``); not modified.
        detections: ``{image_id, category_id, bbox: [x, y, w, h] in pixels, score}`` per detection;
            not modified.
        img_ids: evaluate only these images (default: every image of ``gt``), as upstream does
            when it validates on a subset.
        per_class: also return ``per_class`` ``{category_id: AP}`` and ``per_class_ap50``
            ``{category_id: AP50}`` read from COCOeval's precision array, for the categories that
            have ground truth in the evaluated images.
        verbose: print COCOeval's output (progress and the 12-line summary).

    Returns:
        ``AP``, ``AP50``, ``AP75`` (floats; pycocotools' -1 for "no ground truth" reported as 0.0),
        ``stats`` (COCOeval's 12 numbers, unchanged) and ``summary`` (the summary's text).

    Raises:
        DataError: the ground truth lacks a key, or detections / ``img_ids`` name unknown images.
    """
    from faster_coco_eval import COCO
    from faster_coco_eval import COCOeval_faster as COCOeval

    gt = _prepare_gt(gt)
    log = io.StringIO()
    summary = io.StringIO()
    with contextlib.redirect_stdout(log):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
    known = set(coco_gt.getImgIds())
    unknown = {d["image_id"] for d in detections} - known
    if unknown:
        raise DataError(
            f"{len(unknown)} detected image id(s) are not in the ground truth, e.g. {sorted(unknown)[:5]}"
        )
    dets = [
        {
            "image_id": d["image_id"],
            "category_id": d["category_id"],
            "bbox": [float(v) for v in d["bbox"]],
            "score": float(d["score"]),
        }
        for d in detections
    ]
    with contextlib.redirect_stdout(log):
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:  # loadRes rejects an empty list; an empty result set scores 0 wherever there is gt
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(gt["images"]),
                "categories": list(gt["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox", print_function=print)
        if img_ids is not None:
            ids = sorted(set(img_ids))
            missing = set(ids) - known
            if missing:
                raise DataError(
                    f"{len(missing)} image id(s) to evaluate are not in the ground truth, "
                    f"e.g. {sorted(missing)[:5]}"
                )
            evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    if verbose:
        sys.stdout.write(log.getvalue() + summary.getvalue())

    stats = [float(s) for s in evaluator.stats]
    result: dict[str, Any] = {
        "AP": max(stats[0], 0.0),
        "AP50": max(stats[1], 0.0),
        "AP75": max(stats[2], 0.0),
        "stats": stats,
        "summary": summary.getvalue(),
    }
    if per_class:
        params = evaluator.params
        area = params.areaRngLbl.index("all")
        max_det = params.maxDets.index(100) if 100 in params.maxDets else len(params.maxDets) - 1
        precision = evaluator.eval["precision"]  # (T, R, K, A, M), -1 where there is no gt
        aps: dict[Any, float] = {}
        ap50s: dict[Any, float] = {}
        for k, cat in enumerate(params.catIds):  # evaluate() turned these into numpy integers
            cat = cat.item() if isinstance(cat, np.generic) else cat
            p = precision[:, :, k, area, max_det]
            if (p > -1).any():
                aps[cat] = float(p[p > -1].mean())
                p50 = p[0]
                ap50s[cat] = float(p50[p50 > -1].mean()) if (p50 > -1).any() else 0.0
        result["per_class"] = aps
        result["per_class_ap50"] = ap50s
    return result


# --------------------------------------------------------------------------------------------------
# upstream YOLO precision / recall
# --------------------------------------------------------------------------------------------------


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box-filter ``y`` over a window of ``f`` of its length (odd, edge-padded; same length out)."""
    nf = round(len(y) * f * 2) // 2 + 1
    half = nf // 2
    padded = np.concatenate((np.full(half, y[0]), y, np.full(half, y[-1])))
    return np.convolve(padded, np.ones(nf) / nf, mode="valid")


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one precision / recall curve by 101-point interpolation (upstream ``method='interp'``).

    Sentinels (recall 0, precision 1) and (recall 1, precision 0) are added, precision is made
    monotonically non-increasing (its envelope), sampled at recall 0, 0.01, ..., 1 and integrated
    with the trapezoidal rule. Returns ``(ap, envelope precision, recall with sentinels)``.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    ap = float(_trapezoid(np.interp(x, mrec, mpre), x))
    return ap, mpre, mrec


def ap_per_class(
    tp: ArrayLike,
    conf: ArrayLike,
    pred_cls: ArrayLike,
    target_cls: ArrayLike,
    eps: float = 1e-16,
) -> dict[str, Any]:
    """Per-class precision, recall and AP the way upstream YOLO reports them.

    Args:
        tp: ``(n_pred, n_iou)`` bool, whether each prediction matched a label at each IoU
            threshold (:func:`match_predictions`; 10 thresholds 0.50:0.05:0.95).
        conf: ``(n_pred,)`` confidences.
        pred_cls: ``(n_pred,)`` predicted classes.
        target_cls: ``(n_labels,)`` the classes of every label of every image.
        eps: guards divisions.

    Only classes present in ``target_cls`` are scored. P and R are read off per-class curves
    sampled on a 1000-point confidence grid ``px``, at the grid index that maximises the mean
    over classes of F1 = 2PR / (P + R), smoothed by a box filter of 0.1 of the grid.

    Returns:
        ``precision``, ``recall`` (means over classes at the chosen confidence), ``ap50``, ``ap``
        (means of the per-class AP@0.5 and AP@0.5:0.95), ``conf`` (the chosen confidence);
        per class: ``classes``, ``n_targets``, ``p``, ``r``, ``f1``, ``tp``, ``fp`` (counts at the
        chosen confidence), ``ap50_class``, ``ap_class``, ``ap_matrix`` ``(nc, n_iou)``; curves:
        ``px`` (1000,), ``p_curve``, ``r_curve``, ``f1_curve`` (confidence on x) and ``pr_curve``
        (precision at recall ``px``, IoU 0.5), each ``(nc, 1000)``.
    """
    tp_arr = _to_numpy(tp).astype(np.float64)
    if tp_arr.ndim == 1:
        tp_arr = tp_arr[:, None]
    n_iou = tp_arr.shape[1] if tp_arr.ndim == 2 else 1
    tp_arr = tp_arr.reshape(-1, n_iou)
    conf_arr = _to_numpy(conf).astype(np.float64).reshape(-1)
    pcls = _to_numpy(pred_cls).reshape(-1)
    tcls = _to_numpy(target_cls).reshape(-1)
    if not (len(tp_arr) == len(conf_arr) == len(pcls)):
        raise ValueError(
            f"tp, conf and pred_cls differ in length: {len(tp_arr)}, {len(conf_arr)}, {len(pcls)}"
        )

    order = np.argsort(-conf_arr, kind="stable")
    tp_arr, conf_arr, pcls = tp_arr[order], conf_arr[order], pcls[order]
    classes, n_targets = np.unique(tcls, return_counts=True)
    nc = len(classes)
    px = np.linspace(0, 1, 1000)
    ap = np.zeros((nc, n_iou))
    p_curve, r_curve, pr_curve = np.zeros((nc, 1000)), np.zeros((nc, 1000)), np.zeros((nc, 1000))

    for ci, c in enumerate(classes):
        sel = pcls == c
        if not sel.any():
            continue
        tpc = tp_arr[sel].cumsum(0)
        fpc = (1 - tp_arr[sel]).cumsum(0)
        recall = tpc / (n_targets[ci] + eps)
        precision = tpc / (tpc + fpc)
        # confidences fall along the list, so -conf rises as np.interp requires
        r_curve[ci] = np.interp(-px, -conf_arr[sel], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-px, -conf_arr[sel], precision[:, 0], left=1)
        for j in range(n_iou):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
            if j == 0:
                pr_curve[ci] = np.interp(px, mrec, mpre)

    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    best = int(smooth(f1_curve.mean(0), 0.1).argmax()) if nc else 0
    p, r, f1 = p_curve[:, best], r_curve[:, best], f1_curve[:, best]
    tp_count = (r * n_targets).round()
    fp_count = (tp_count / (p + eps) - tp_count).round()

    def mean(a: np.ndarray) -> float:
        return float(a.mean()) if a.size else 0.0

    return {
        "precision": mean(p),
        "recall": mean(r),
        "ap50": mean(ap[:, 0]) if n_iou else 0.0,
        "ap": mean(ap),
        "conf": float(px[best]),
        "classes": classes.astype(np.int64),
        "n_targets": n_targets,
        "p": p,
        "r": r,
        "f1": f1,
        "tp": tp_count,
        "fp": fp_count,
        "ap50_class": ap[:, 0],
        "ap_class": ap.mean(1) if n_iou else np.zeros(nc),
        "ap_matrix": ap,
        "px": px,
        "p_curve": p_curve,
        "r_curve": r_curve,
        "f1_curve": f1_curve,
        "pr_curve": pr_curve,
    }


def match_predictions(
    detections: ArrayLike,
    labels: ArrayLike,
    iouv: ArrayLike | None = None,
) -> torch.Tensor:
    """Which detections are true positives at each IoU threshold (upstream ``process_batch``).

    Args:
        detections: ``(n, 6)`` ``x1, y1, x2, y2, conf, cls``.
        labels: ``(m, 5)`` ``cls, x1, y1, x2, y2`` in the same pixel frame.
        iouv: IoU thresholds; default COCO's 0.50:0.05:0.95 (:data:`IOU_THRESHOLDS`).

    At each threshold a detection may match a label of its own class with IoU >= the threshold,
    one to one: every detection claims its highest-IoU such label, and a label claimed by several
    detections goes to the most confident one (the first on a tie). This is exactly upstream's
    rule for detections sorted by confidence, as NMS returns them; the losers are not re-matched.

    Returns:
        ``(n, len(iouv))`` bool tensor, on ``detections``' device when it is a tensor.
    """
    thresholds = IOU_THRESHOLDS if iouv is None else _to_numpy(iouv).astype(np.float64).reshape(-1)
    det = _rows(detections, 6, "detections")
    lab = _rows(labels, 5, "labels")
    correct = np.zeros((len(det), len(thresholds)), dtype=bool)
    if len(det) and len(lab):
        iou = box_iou(torch.from_numpy(lab[:, 1:5]), torch.from_numpy(det[:, :4])).numpy()  # (m, n)
        iou = np.where(lab[:, 0:1] == det[None, :, 5], iou, -1.0)  # other classes never match
        conf = det[:, 4]
        for k, t in enumerate(thresholds):
            ok = iou >= t
            claimants = np.nonzero(ok.any(0))[0]
            if not len(claimants):
                continue
            claimed = np.where(ok, iou, -np.inf)[:, claimants].argmax(0)
            order = np.lexsort((claimants, -conf[claimants]))  # by confidence, then index
            claimants, claimed = claimants[order], claimed[order]
            _, first = np.unique(claimed, return_index=True)
            correct[claimants[first], k] = True
    out = torch.from_numpy(correct)
    return out.to(detections.device) if isinstance(detections, torch.Tensor) else out


# --------------------------------------------------------------------------------------------------
# accumulation over a data set
# --------------------------------------------------------------------------------------------------


class MetricAccumulator:
    """Collect per-image detections and labels; :meth:`compute` scores them.

    Args:
        class_map: contiguous class index -> COCO ``category_id`` (a sequence indexed by class, or
            a mapping), e.g. the 80 COCO ids 1..90; ``None`` uses the class index as the id.
        nc: number of classes, used for the categories of a ground truth built from the labels.
        iouv: IoU thresholds for the P/R matching; default COCO's 0.50:0.05:0.95.

    Attributes:
        coco_detections: COCO-format detections gathered so far (bbox rounded to 3 decimals, score
            to 5, as upstream writes ``predictions.json``).
        pr_result: the last :func:`ap_per_class` result (curves for :func:`plot_pr_curve`).
        coco_result: the last :func:`coco_map` result.
    """

    def __init__(
        self,
        class_map: Sequence[int] | Mapping[int, int] | None = None,
        nc: int | None = None,
        iouv: ArrayLike | None = None,
    ) -> None:
        self.class_map = class_map
        self.nc = nc
        self.iouv = IOU_THRESHOLDS if iouv is None else _to_numpy(iouv).astype(np.float64).reshape(-1)
        self.coco_detections: list[dict[str, Any]] = []
        self.pr_result: dict[str, Any] | None = None
        self.coco_result: dict[str, Any] | None = None
        self._correct: list[np.ndarray] = []
        self._conf: list[np.ndarray] = []
        self._pred_cls: list[np.ndarray] = []
        self._target_cls: list[np.ndarray] = []
        self._labels: dict[Any, np.ndarray] = {}
        self._shapes: dict[Any, tuple[int, int] | None] = {}

    def category_id(self, cls: int) -> int:
        """The COCO ``category_id`` of a contiguous class index."""
        if self.class_map is None:
            return int(cls)
        try:
            return int(self.class_map[int(cls)])
        except (IndexError, KeyError):
            raise DataError(f"class {int(cls)} has no COCO category id in the class map") from None

    @property
    def image_ids(self) -> list[Any]:
        """The ids of the images added so far, in order."""
        return list(self._labels)

    def update(
        self,
        image_id: int,
        detections: ArrayLike | None,
        labels: ArrayLike | None,
        image_shape: tuple[int, int] | None = None,
    ) -> None:
        """Add one image.

        Args:
            image_id: the image's COCO id (unique across calls).
            detections: ``(n, 6)`` ``x1, y1, x2, y2, conf, cls`` in original-image pixels (after
                :func:`~yolov9_qat.eval.nms.scale_boxes`), torch or numpy; ``None`` for none.
            labels: ``(m, 5)`` ``cls, x1, y1, x2, y2`` in original-image pixels; ``None`` for none.
            image_shape: ``(h, w)`` of the original image; recorded in a ground truth built from
                the labels (optional).
        """
        if isinstance(image_id, np.integer | torch.Tensor):
            image_id = int(image_id)
        if image_id in self._labels:
            raise ValueError(f"image {image_id!r} was already added")
        det = _rows(detections, 6, "detections")
        lab = _rows(labels, 5, "labels")
        self._labels[image_id] = lab
        self._shapes[image_id] = image_shape
        if len(det) or len(lab):
            self._correct.append(match_predictions(det, lab, self.iouv).numpy())
            self._conf.append(det[:, 4])
            self._pred_cls.append(det[:, 5])
            self._target_cls.append(lab[:, 0])
        for x1, y1, x2, y2, score, cls in det.tolist():
            self.coco_detections.append(
                {
                    "image_id": image_id,
                    "category_id": self.category_id(int(cls)),
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(score, 5),
                }
            )

    def ground_truth(self) -> dict[str, Any]:
        """A COCO-format ground truth built from the labels added so far (box areas, no crowds)."""
        images, annotations = [], []
        for image_id, lab in self._labels.items():
            image: dict[str, Any] = {"id": image_id}
            shape = self._shapes[image_id]
            if shape is not None:
                image["height"], image["width"] = int(shape[0]), int(shape[1])
            images.append(image)
            for cls, x1, y1, x2, y2 in lab.tolist():
                w, h = x2 - x1, y2 - y1
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": self.category_id(int(cls)),
                        "bbox": [x1, y1, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        if self.class_map is not None:
            cat_ids = set(self.class_map.values() if isinstance(self.class_map, Mapping) else self.class_map)
        elif self.nc is not None:
            cat_ids = set(range(self.nc))
        else:
            cat_ids = {a["category_id"] for a in annotations} | {
                d["category_id"] for d in self.coco_detections
            }
        categories = [{"id": int(c), "name": str(c)} for c in sorted(cat_ids)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def compute(self, gt_coco_dict: Mapping[str, Any] | None = None, verbose: bool = False) -> dict[str, Any]:
        """Score everything added so far.

        Args:
            gt_coco_dict: the data set's COCO ground truth (e.g. ``instances_val2017.json``
                loaded); ``None`` builds one from the added labels (:meth:`ground_truth`). Only
                the added images are evaluated.
            verbose: print COCOeval's output.

        Returns:
            ``AP``, ``AP50`` (COCOeval), ``precision``, ``recall`` (upstream YOLO's, at the best
            mean F1), ``per_class`` ``{class: {images, instances, P, R, AP50, AP}}`` for the
            classes with labels (AP50 / AP by COCOeval; ``nan`` where the ground truth has no
            such category), ``n_images`` and ``n_instances``. Plain Python numbers throughout.
        """
        gt = self.ground_truth() if gt_coco_dict is None else gt_coco_dict
        coco = coco_map(gt, self.coco_detections, img_ids=self.image_ids, per_class=True, verbose=verbose)
        niou = len(self.iouv)
        if self._correct:
            pr = ap_per_class(
                np.concatenate(self._correct).reshape(-1, niou),
                np.concatenate(self._conf),
                np.concatenate(self._pred_cls),
                np.concatenate(self._target_cls),
            )
        else:
            pr = ap_per_class(np.zeros((0, niou)), np.zeros(0), np.zeros(0), np.zeros(0))
        self.coco_result, self.pr_result = coco, pr

        per_class: dict[int, dict[str, Any]] = {}
        for k, cls in enumerate(pr["classes"].tolist()):
            cat = self.category_id(cls)
            images = sum(bool((lab[:, 0] == cls).any()) for lab in self._labels.values())
            per_class[int(cls)] = {
                "images": images,
                "instances": int(pr["n_targets"][k]),
                "P": float(pr["p"][k]),
                "R": float(pr["r"][k]),
                "AP50": coco["per_class_ap50"].get(cat, float("nan")),
                "AP": coco["per_class"].get(cat, float("nan")),
            }
        return {
            "AP": coco["AP"],
            "AP50": coco["AP50"],
            "precision": pr["precision"],
            "recall": pr["recall"],
            "per_class": per_class,
            "n_images": len(self._labels),
            "n_instances": int(sum(len(lab) for lab in self._labels.values())),
        }


# --------------------------------------------------------------------------------------------------
# plotting
# --------------------------------------------------------------------------------------------------


def plot_pr_curve(
    result: Mapping[str, Any],
    names: Mapping[int, str] | Sequence[str] | None,
    path: str | os.PathLike[str],
) -> Path:
    """Plot the precision-recall curves (IoU 0.5) of an :func:`ap_per_class` result to ``path``.

    One thin line per class (labelled when there are fewer than 21) and a thick one for the mean
    over classes. Uses matplotlib's Agg canvas without touching pyplot's global state; the file is
    written atomically (its format follows the suffix, PNG by default).
    """
    if "pr_curve" not in result:
        raise ValueError("plot_pr_curve needs an ap_per_class() result (MetricAccumulator.pr_result)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    px, curves = result["px"], result["pr_curve"]
    classes, ap50 = result["classes"], result["ap50_class"]

    def name(c: int) -> str:
        if names is None:
            return str(c)
        if isinstance(names, Mapping):
            return str(names.get(c, c))
        return names[c] if 0 <= c < len(names) else str(c)

    fig = Figure(figsize=(9, 6), tight_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labelled = 0 < len(classes) < 21
    for k, c in enumerate(classes.tolist()):
        label = f"{name(c)} {ap50[k]:.3f}" if labelled else None
        ax.plot(px, curves[k], linewidth=1, label=label, color=None if labelled else "grey")
    mean_curve = curves.mean(0) if len(classes) else np.zeros_like(px)
    ax.plot(px, mean_curve, linewidth=3, color="blue", label=f"all classes {result['ap50']:.3f} mAP@0.5")
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Precision-Recall Curve")
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=150, format=fmt))
