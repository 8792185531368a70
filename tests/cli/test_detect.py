"""``yolov9-qat detect``: folders, videos and bad input through ``cli.main``; the same boxes on every
backend and the same boxes ``val`` scores.

The model is an untrained gelan-n with settled batch-norm statistics and class biases drawn around -2
(class scores around 0.1, so a low ``--conf-thres`` gives a few dozen boxes per 64 px image); nothing is
trained, the tests compare backends and code paths on one set of weights.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from shared_helpers import _one_thread  # noqa: F401 (an autouse fixture)
from yolov9_qat import cli
from yolov9_qat.detect import ImageResult, detect_images, input_shape, prepare_image, resolve_source
from yolov9_qat.errors import UserError

pytestmark = pytest.mark.cpu
IMG = 64
NC = 10
CONF = 0.1  # an untrained model's class scores sit around 0.1


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from yolov9_qat.data.synth import generate

    return generate(
        tmp_path_factory.mktemp("synth_detect"), seed=7, n_train=2, n_val=6, imgsz=IMG, progress=False
    )


@pytest.fixture(scope="module")
def val_images(synth) -> list[Path]:
    files = sorted((synth.parent / "images" / "val").glob("*.jpg"))
    assert len(files) == 6
    return files


@pytest.fixture(scope="module")
def batch(val_images) -> torch.Tensor:
    """The val images as the model takes them (float, [0, 1])."""
    return torch.stack([prepare_image(cv2.imread(str(f)), IMG)[0] for f in val_images]).float() / 255


@pytest.fixture(scope="module")
def float_model(synth, batch):
    from yolov9_qat.bench.untrained import settle_batchnorm
    from yolov9_qat.data.config import load_data_yaml
    from yolov9_qat.models.yolo import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("gelan-n", nc=NC, names=load_data_yaml(synth)["names"])
    with torch.no_grad():  # class scores around 0.1 instead of the training init's 1e-4
        for tower in model.model[-1].cv3:
            tower[-1].bias.normal_(-2.0, 1.0)
    return settle_batchnorm(model, [batch, batch.flip(-1)]).fuse().eval()


@pytest.fixture(scope="module")
def weights(float_model, tmp_path_factory) -> dict[str, Path]:
    """The float checkpoint, its ONNX export and its end-to-end export (ONNX NMS, conf CONF)."""
    from yolov9_qat.export.onnx import ExportOptions, export_onnx
    from yolov9_qat.models.checkpoint import save

    root = tmp_path_factory.mktemp("detect_weights")
    e2e = ExportOptions(imgsz=IMG, end2end="onnx", conf_thres=CONF, iou_thres=0.45, max_det=300)
    return {
        "pt": save(float_model, root / "gelan-n.pt"),
        "onnx": export_onnx(float_model, root / "gelan-n.onnx", ExportOptions(imgsz=IMG)),
        "e2e": export_onnx(float_model, root / "gelan-n-end2end-onnx.onnx", e2e),
    }


@pytest.fixture(scope="module")
def qat_weights(float_model, batch, tmp_path_factory) -> dict[str, Path]:
    """A calibrated (PTQ) Q/DQ model as ``quantize`` saves it (``qat_best_*.pt``) and its ONNX export."""
    from yolov9_qat.export.onnx import ExportOptions, export_onnx
    from yolov9_qat.quant.io import save_qat
    from yolov9_qat.quant.quantize import calibrate, prepare_qat_model

    root = tmp_path_factory.mktemp("detect_qat")
    model = prepare_qat_model(copy.deepcopy(float_model), calib_method="max")
    calibrate(model, [batch], n_batches=1)
    model.eval()
    return {
        "pt": save_qat(model, root / "qat_best_gelan-n.pt"),
        "onnx": export_onnx(model, root / "qat_best_gelan-n.onnx", ExportOptions(imgsz=IMG)),
    }


def detect(tmp_path: Path, *args: str) -> int:
    return cli.main(["detect", "--project", str(tmp_path / "runs"), "--no-progress", "--threads", "1", *args])


def summary(run: Path) -> dict:
    return json.loads((run / "detections.json").read_text())


def one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def match(a: list[ImageResult], b: list[ImageResult], box_tol: float) -> tuple[int, int, float, float]:
    """(detections of ``a``, how many have a twin in ``b`` — same image and class, every corner within
    ``box_tol`` px, the closest score among those — worst corner error, worst score error)."""
    n = found = 0
    worst_box = worst_score = 0.0
    assert [r.path for r in a] == [r.path for r in b]
    for ra, rb in zip(a, b, strict=True):
        for row in ra.det:
            n += 1
            same = rb.det[rb.det[:, 5] == row[5]]
            d = np.abs(same[:, :4] - row[:4]).max(1) if len(same) else np.zeros(0)
            if not (d <= box_tol).any():
                continue
            ds = np.where(d <= box_tol, np.abs(same[:, 4] - row[4]), np.inf)
            j = int(ds.argmin())
            found += 1
            worst_box, worst_score = max(worst_box, float(d[j])), max(worst_score, float(ds[j]))
    return n, found, worst_box, worst_score


# --- (1) a folder with a float checkpoint: pictures, labels, COCO JSON, and val's own boxes --------------
def test_folder_with_float_checkpoint_writes_pictures_labels_and_json(
    tmp_path, synth, val_images, weights, float_model, capsys
) -> None:
    src = val_images[0].parent
    rc = detect(
        tmp_path, "--weights", str(weights["pt"]), "--source", str(src), "--img", str(IMG), "--conf-thres",
        str(CONF), "--save-txt", "--save-conf", "--save-json",
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "exp"
    assert "6 image(s)" in out and "0 skipped" in out and str(run) in out, out
    s = summary(run)
    assert s["backend"] == "torch" and s["images"] == 6 and s["skipped"] == 0 and s["rect"] is True
    assert s["detections"] == sum(len(r["detections"]) for r in s["results"]) > 6
    for f in val_images:  # one annotated picture per input, same name and size, boxes drawn on it
        drawn, original = cv2.imread(str(run / f.name)), cv2.imread(str(f))
        assert drawn is not None and drawn.shape == original.shape
        assert np.abs(drawn.astype(int) - original).max() > 100
        assert (run / "labels" / f"{f.stem}.txt").is_file()
    rows = json.loads((run / "gelan-n_predictions.json").read_text())
    assert len(rows) == s["detections"]
    assert {r["image_id"] for r in rows} == {int(f.stem) for f in val_images}
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} and r["score"] > CONF for r in rows)

    # the boxes val scores: the evaluator's own --save-txt on the same images, NMS settings and input
    from yolov9_qat.data.config import load_data_yaml
    from yolov9_qat.eval.evaluator import Evaluator, torch_predictor

    evaluator = Evaluator.for_data(
        load_data_yaml(synth), IMG, batch_size=32, workers=0, rect=True, conf_thres=CONF, iou_thres=0.45,
        max_det=1000,
    )  # fmt: skip
    evaluator.run(torch_predictor(float_model), progress=False, save_txt=tmp_path / "val", save_conf=True)
    for f in val_images:
        ours = np.loadtxt(run / "labels" / f"{f.stem}.txt", ndmin=2)
        vals = np.loadtxt(tmp_path / "val" / f"{f.stem}.txt", ndmin=2)
        assert ours.shape == vals.shape and ours.shape[1] == 6
        for row in ours:  # same rows (a batch of 32 and a batch of 1 may differ in the last float bits)
            assert (np.abs(vals - row).max(1) < 1e-4).any(), row


# --- (2) backends agree: checkpoint vs its ONNX (float and Q/DQ), end-to-end vs plain -----------------
def test_float_onnx_gives_the_checkpoints_boxes(val_images, weights) -> None:
    files = [str(f) for f in val_images]
    kw = {"imgsz": IMG, "conf_thres": CONF, "rect": False, "threads": 1}  # the ONNX takes 64 x 64
    torch_res = detect_images(weights["pt"], files, **kw)
    ort_res = detect_images(weights["onnx"], files, **kw)
    assert sum(len(r.det) for r in torch_res) == sum(len(r.det) for r in ort_res) > 6
    for a, b in ((torch_res, ort_res), (ort_res, torch_res)):
        n, found, box, score = match(a, b, box_tol=1e-2)
        assert found == n and box < 1e-2 and score < 1e-4, (n, found, box, score)  # measured 1e-5 px, 1e-7


def test_qdq_onnx_gives_the_qat_checkpoints_boxes(val_images, qat_weights) -> None:
    """ONNX Runtime's INT8 against PyTorch's fake quantization: the same arithmetic up to float rounding,
    so a value on a rounding boundary may land one int8 step away. Measured on these 6 images (255
    detections, ``none`` and the VNNI CPU's ``auto`` = ``integer`` rewrite alike): 253-254 have a twin,
    corners within 0.007 px, scores within 1.6e-3; the other one or two moved across ``--conf-thres`` or
    an NMS decision. The float pair is exact to 1.5e-5 px / 1e-7, so the bounds here are int8's: 2 % of
    the detections may move, the rest within 0.05 px and 3e-3 (room for another CPU's kernels)."""
    files = [str(f) for f in val_images]
    kw = {"imgsz": IMG, "conf_thres": CONF, "rect": False, "threads": 1}
    fake = detect_images(qat_weights["pt"], files, **kw)
    for rewrite in ("none", "auto"):
        int8 = detect_images(qat_weights["onnx"], files, ort_rewrite=rewrite, **kw)
        for a, b in ((fake, int8), (int8, fake)):
            n, found, box, score = match(a, b, box_tol=0.05)
            assert n > 6 and found >= 0.98 * n and box < 0.05 and score < 3e-3, (
                rewrite,
                n,
                found,
                box,
                score,
            )


def test_end2end_graph_gives_the_plain_graphs_boxes(tmp_path, val_images, weights, capsys) -> None:
    """Its NMS runs in the graph (at its export's conf / IoU): the same boxes as the plain graph + val's NMS,
    and the CLI takes the class names from the ONNX metadata."""
    files = [str(f) for f in val_images]
    plain = detect_images(weights["onnx"], files, conf_thres=CONF, threads=1)
    e2e = detect_images(weights["e2e"], files, conf_thres=CONF, threads=1)
    n, found, box, score = match(e2e, plain, box_tol=1e-3)
    assert n == sum(len(r.det) for r in plain) > 6 and found == n and box < 1e-3 and score < 1e-5
    rc = detect(tmp_path, "--weights", str(weights["e2e"]), "--source", files[0], "--conf-thres", str(CONF))
    assert rc == 0
    s = summary(tmp_path / "runs" / "exp")
    assert s["backend"] == "onnxruntime" and s["end2end"] and s["imgsz"] == IMG and s["names"][0] == "circle"
    assert s["results"][0]["detections"][0]["name"] in s["names"]


# --- (3) a video -----------------------------------------------------------------------------------
def test_video_source_writes_an_annotated_video_with_every_frame(
    tmp_path, val_images, weights, capsys
) -> None:
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (IMG, IMG))
    assert writer.isOpened(), "this OpenCV cannot write mp4v"
    for f in val_images:
        writer.write(cv2.imread(str(f)))
    writer.release()

    rc = detect(
        tmp_path,
        "--weights",
        str(weights["onnx"]),
        "--source",
        str(clip),
        "--conf-thres",
        str(CONF),
        "--save-txt",
    )
    assert rc == 0
    run = tmp_path / "runs" / "exp"
    out = run / "clip.mp4"
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == len(val_images) and frames[0].shape == (IMG, IMG, 3)
    s = summary(run)
    assert (
        s["videos"] == 1 and s["frames"] == len(val_images) and s["images"] == 0 and s["saved"] == [str(out)]
    )
    assert [r["frame"] for r in s["results"]] == list(range(1, len(val_images) + 1))
    assert sorted(p.name for p in (run / "labels").iterdir()) == sorted(f"clip_{i}.txt" for i in range(1, 7))
    assert "6 frame(s) of 1 video(s)" in capsys.readouterr().out


def test_frames_get_vals_input(tmp_path) -> None:
    """A decoded frame becomes exactly the tensor (and letterbox record) val's data set makes of that image."""
    from yolov9_qat.data.dataset import YoloDataset

    rng = np.random.default_rng(0)
    files = []
    for i, (h, w) in enumerate([(64, 64), (50, 80), (90, 40), (200, 130), (33, 31)]):
        files.append(str(tmp_path / f"im{i}.png"))
        cv2.imwrite(files[-1], rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    for rect in (False, True):
        for imgsz in (64, 96):
            ds = YoloDataset(files, imgsz=imgsz, rect=rect, batch_size=1, cache_labels=False)
            for i in range(len(ds)):
                img, _, path, shapes = ds[i]
                got, got_shapes = prepare_image(cv2.imread(path), imgsz, rect)
                assert torch.equal(got, img) and got_shapes == shapes, (path, rect, imgsz)
                assert tuple(got.shape[1:]) == input_shape(*shapes[0], imgsz, rect)


# --- (4) bad input ---------------------------------------------------------------------------------
def test_bad_input_is_one_line_and_exit_2(tmp_path, val_images, weights, capsys) -> None:
    src = str(val_images[0].parent)
    one_line_error(capsys, detect(tmp_path, "--weights", str(weights["pt"]), "--source", str(tmp_path / "nope")),
                   "--source", "no such file or folder")  # fmt: skip
    one_line_error(capsys, detect(tmp_path, "--weights", str(weights["pt"]), "--source", str(tmp_path / "*.png")),
                   "matches no files")  # fmt: skip
    (tmp_path / "notes.md").write_text("hi")
    one_line_error(capsys, detect(tmp_path, "--weights", str(weights["pt"]), "--source", str(tmp_path / "notes.md")),
                   "not an image, a video")  # fmt: skip
    model = tmp_path / "model.h5"
    model.write_bytes(b"\0")
    one_line_error(
        capsys, detect(tmp_path, "--weights", str(model), "--source", src), "unknown model type '.h5'"
    )
    one_line_error(
        capsys, detect(tmp_path, "--weights", str(tmp_path / "x.pt"), "--source", src), "no such file"
    )
    one_line_error(capsys, detect(tmp_path, "--weights", str(weights["onnx"]), "--source", src, "--img", "96"),
                   "takes 3x64x64 images")  # fmt: skip
    one_line_error(capsys, detect(tmp_path, "--weights", str(weights["pt"]), "--source", src, "--classes", "12"),
                   "--classes 12")  # fmt: skip
    assert not (tmp_path / "runs").exists(), "no run folder for a run that never started"
    if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
        engine = tmp_path / "model.engine"
        engine.write_bytes(b"not an engine")
        one_line_error(capsys, detect(tmp_path, "--weights", str(engine), "--source", src),
                       "detect --backend tensorrt needs an NVIDIA GPU with TensorRT")  # fmt: skip
    with pytest.raises(UserError, match="webcams and streams"):
        resolve_source("0")


def test_corrupt_images_are_skipped_and_counted(tmp_path, val_images, weights, capsys) -> None:
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    for f in val_images[:2]:
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "sub" / val_images[2].name).write_bytes(val_images[2].read_bytes())
    (folder / "cut.jpg").write_bytes(val_images[3].read_bytes()[:300])  # truncated
    (folder / "junk.png").write_text("not a picture")
    (folder / "readme.txt").write_text("ignored: not an image")
    rc = detect(
        tmp_path,
        "--weights",
        str(weights["pt"]),
        "--source",
        str(folder),
        "--img",
        str(IMG),
        "--conf-thres",
        str(CONF),
    )
    assert rc == 0
    assert "3 image(s)" in capsys.readouterr().out
    run = tmp_path / "runs" / "exp"
    s = summary(run)
    assert s["images"] == 3 and s["skipped"] == 2
    assert sorted(Path(f["path"]).name for f in s["skipped_files"]) == ["cut.jpg", "junk.png"]
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*.jpg")) == sorted(
        [val_images[0].name, val_images[1].name, f"sub/{val_images[2].name}"]
    )

    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "junk.png").write_text("not a picture")
    one_line_error(capsys, detect(tmp_path, "--weights", str(weights["pt"]), "--source", str(only_bad)),
                   "could be read", "junk.png")  # fmt: skip


# --- (5) --classes and --nosave ----------------------------------------------------------------------
def test_classes_filter_and_nosave(tmp_path, val_images, weights) -> None:
    src = str(val_images[0].parent)
    common = ["--weights", str(weights["pt"]), "--source", src, "--img", str(IMG), "--conf-thres", str(CONF)]
    assert detect(tmp_path, *common, "--nosave", "--name", "all") == 0
    everything = summary(tmp_path / "runs" / "all")
    counts: dict[int, int] = {}
    for r in everything["results"]:
        for d in r["detections"]:
            counts[d["class"]] = counts.get(d["class"], 0) + 1
    keep = sorted(counts, key=counts.get)[-2:]  # the two most frequent classes
    assert len(counts) > 2

    assert (
        detect(tmp_path, *common, "--nosave", "--save-txt", "--classes", *map(str, keep), "--name", "some")
        == 0
    )
    run = tmp_path / "runs" / "some"
    some = summary(run)
    assert some["classes"] == sorted(keep) and some["saved"] == []
    assert not list(run.glob("*.jpg")), "--nosave wrote pictures"
    assert len(list((run / "labels").glob("*.txt"))) == len(val_images)
    # per-class NMS: filtering first keeps exactly the unfiltered detections of those classes
    for a, b in zip(everything["results"], some["results"], strict=True):
        assert [d for d in a["detections"] if d["class"] in keep] == b["detections"]
    assert some["detections"] == sum(counts[c] for c in keep)


def test_sources_glob_list_and_hide_flags(tmp_path, val_images, weights) -> None:
    src = val_images[0].parent
    got = resolve_source(str(src / "00000[12].jpg"))
    assert [Path(p).name for p in got.images] == [val_images[1].name, val_images[2].name] and not got.videos
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(str(f) for f in val_images[:3]))
    assert len(resolve_source(lst).images) == 3
    rc = detect(
        tmp_path, "--weights", str(weights["pt"]), "--source", str(src / "*.jpg"), "--img", str(IMG),
        "--conf-thres", str(CONF), "--hide-labels", "--line-thickness", "1", "--max-det", "3",
    )  # fmt: skip
    assert rc == 0
    s = summary(tmp_path / "runs" / "exp")
    assert s["images"] == 6 and all(len(r["detections"]) <= 3 for r in s["results"])
    assert (
        detect(tmp_path, "--weights", str(weights["pt"]), "--source", str(val_images[0]), "--img", str(IMG))
        == 0
    )
    assert (tmp_path / "runs" / "exp2" / val_images[0].name).is_file()  # a new numbered run folder
