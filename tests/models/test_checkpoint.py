"""Checkpoints: official upstream pickles load without upstream code; the own format round-trips."""

from __future__ import annotations

import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from yolov9_qat.errors import CheckpointError, ConfigError
from yolov9_qat.models import checkpoint
from yolov9_qat.models.reparam import reparameterize
from yolov9_qat.models.yolo import DetectionModel


@pytest.fixture(scope="module")
def ref(official_dir):
    return np.load(official_dir / "reference_outputs.npz")


def run(model: DetectionModel, x: np.ndarray, aux: bool = False):
    model.eval()
    model.head.return_aux = aux
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return tuple(o.numpy() for o in out) if aux else out.numpy()


@pytest.mark.cpu
def test_official_yolov9_checkpoint_reproduces_both_branches(official_dir, ref) -> None:
    ck = checkpoint.load(official_dir / "yolov9-t.pt")
    assert ck.source == "upstream" and ck.model.is_dual and ck.model.cfg_name == "yolov9-t"
    assert sum(p.numel() for p in ck.model.parameters()) == int(ref["yolov9-t.nparams"])
    main, aux = run(ck.model, ref["input"], aux=True)
    assert np.abs(main - ref["yolov9-t.pt.pred_main"]).max() <= 1e-3
    # the stored weights are fp16; the fp32 originals' outputs agree within fp16 rounding
    assert np.abs(main - ref["yolov9-t.pred_main"]).max() <= 5e-3
    assert np.abs(aux - ref["yolov9-t.pred_aux"]).max() <= 5e-3


@pytest.mark.cpu
def test_official_converted_checkpoint(official_dir, ref) -> None:
    ck = checkpoint.load(official_dir / "yolov9-t-converted.pt")
    assert not ck.model.is_dual and ck.model.cfg_name == "gelan-t"
    assert sum(p.numel() for p in ck.model.parameters()) == int(ref["gelan-t-converted.nparams"])
    assert np.abs(run(ck.model, ref["input"]) - ref["yolov9-t-converted.pt.pred"]).max() <= 1e-3
    assert ck.model.names[:2] == ["class0", "class1"]


@pytest.mark.cpu
def test_reparameterize_matches_upstream_conversion(official_dir, ref, tmp_path) -> None:
    src = checkpoint.load(official_dir / "yolov9-t.pt").model
    converted = reparameterize(src, "gelan-t")
    pred = run(converted, ref["input"])
    assert np.abs(pred - ref["yolov9-t-converted.pt.pred"]).max() <= 1e-3
    # saved in the own format and reloaded in a fresh process: same outputs
    path = checkpoint.save(converted, tmp_path / "converted.pt", meta={"origin": "test"})
    assert torch.load(path, weights_only=True)["format"] == "yolov9-qat"
    np.save(tmp_path / "x.npy", ref["input"])
    code = (
        "import numpy as np, torch, sys\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"  # same conv kernels as this process
        "from yolov9_qat.models.checkpoint import load\n"
        f"m = load({str(path)!r}).model\n"
        f"x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))\n"
        "with torch.no_grad(): y = m(x)\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, y.numpy())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert np.abs(np.load(tmp_path / "y.npy") - pred).max() == 0.0


@pytest.mark.cpu
@pytest.mark.parametrize("pair", [("yolov9-s", "gelan-s"), ("yolov9-m", "gelan-m"), ("yolov9-c", "gelan-c"), ("yolov9-e", "gelan-e"), ("yolov9-n", "gelan-n")])  # fmt: skip
def test_reparameterize_every_pair(pair) -> None:
    yolo, gelan = pair
    torch.manual_seed(0)
    src = DetectionModel(yolo, nc=5).eval()
    dst = reparameterize(src, gelan)  # checks equivalence itself
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(src(x), dst(x), atol=1e-4)
    assert dst.cfg_name == gelan and not dst.is_dual


@pytest.mark.cpu
def test_reparameterize_onto_the_wrong_config_is_refused() -> None:
    src = DetectionModel("yolov9-t", nc=3).eval()
    with pytest.raises(ConfigError, match="gelan-c"):
        reparameterize(src, "gelan-c")
    with pytest.raises(ConfigError, match="no auxiliary branch"):
        reparameterize(DetectionModel("gelan-t", nc=3), "gelan-t")


@pytest.mark.cpu
@pytest.mark.parametrize("activation", ["ReLU", "FReLU", "AconC"])
def test_own_format_round_trip_keeps_activation_and_fusing(activation, tmp_path) -> None:
    model = DetectionModel("gelan-n", nc=3, activation=activation, names=["a", "b", "c"]).eval()
    model.fuse()
    path = checkpoint.save(model, tmp_path / "m.pt", meta={"epoch": 3}, epoch=3)
    ck = checkpoint.load(path)
    assert ck.model.activation == activation and ck.model.fused and ck.model.names == ["a", "b", "c"]
    assert ck.meta == {"epoch": 3} and ck.extra["epoch"] == 3
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ck.model(x))
    assert not list(tmp_path.glob(".*.tmp*")), "a temp file was left behind"


# --- bad input ---------------------------------------------------------------------------------
@pytest.mark.cpu
def test_not_a_checkpoint(tmp_path) -> None:
    p = tmp_path / "notes.pt"
    p.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        checkpoint.load(p)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")


@pytest.mark.cpu
def test_truncated_checkpoint(official_dir, tmp_path) -> None:
    data = (official_dir / "yolov9-t-converted.pt").read_bytes()
    p = tmp_path / "cut.pt"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.load(p)


def _rewrite_pickle(src, dst, old: bytes, new: bytes) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = data.replace(old, new)
            zout.writestr(item, data)


@pytest.mark.cpu
def test_unknown_upstream_class_is_named(official_dir, tmp_path) -> None:
    p = tmp_path / "odd.pt"
    # same length keeps the pickle's framing valid: ELAN1 -> ELANX
    _rewrite_pickle(official_dir / "yolov9-t.pt", p, b"ELAN1", b"ELANX")
    with pytest.raises(CheckpointError, match=r"models\.common\.ELANX"):
        checkpoint.load(p)


@pytest.mark.cpu
def test_weights_that_do_not_fit_the_config(tmp_path) -> None:
    ckpt = checkpoint.to_dict(DetectionModel("gelan-n", nc=3))
    ckpt["state_dict"].pop("model.0.conv.weight")
    ckpt["state_dict"]["model.99.extra"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"1 missing .* 1 unexpected"):
        checkpoint.load(tmp_path / "bad.pt")


@pytest.mark.cpu
def test_plain_pickle_of_foreign_object_is_refused(tmp_path) -> None:
    p = tmp_path / "evil.pt"
    torch.save({"model": pickle.loads(pickle.dumps(zipfile.ZipInfo("x")))}, p)
    with pytest.raises(CheckpointError, match="not allowed"):
        checkpoint.load(p)
