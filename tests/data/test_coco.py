"""Tests of the COCO preparation (download, resume, verify, extract, convert) on a tiny fake COCO."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import logging
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from yolov9_qat.data import coco
from yolov9_qat.data.config import load_data_yaml
from yolov9_qat.errors import DataError, UserError
from yolov9_qat.utils import download

W, H = 64, 48


# --------------------------------------------------------------------------------------------------
# A fake COCO: same archive names and layout as the real one, three val images and two train images


def _ann(i: int, image_id: int, cat: int, bbox: list[float], crowd: int = 0) -> dict[str, Any]:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd, "area": 1.0}


VAL_JSON: dict[str, Any] = {
    "images": [
        {"id": 1, "file_name": "000000000001.jpg", "width": W, "height": H},
        {"id": 2, "file_name": "000000000002.jpg", "width": W, "height": H},  # no annotations
        {"id": 3, "file_name": "000000000003.jpg", "width": W, "height": H},
    ],
    "annotations": [
        _ann(10, 1, 1, [8, 12, 16, 24]),  # person -> class 0
        _ann(11, 1, 90, [-4, 0, 20, 10]),  # toothbrush -> class 79, clipped at the left edge
        _ann(12, 1, 1, [0, 0, 30, 30], crowd=1),  # crowd: skipped
        _ann(13, 3, 13, [0, 0, W, H]),  # stop sign (id 13) -> class 11, whole image
        _ann(14, 3, 1, [10, 10, 0, 5]),  # zero width: skipped
    ],
    "categories": [{"id": c, "name": n} for c, n in zip(coco.COCO80_TO_91, coco.COCO80_NAMES, strict=True)],
}
TRAIN_JSON: dict[str, Any] = {
    "images": [
        {"id": 7, "file_name": "000000000007.jpg", "width": W, "height": H},
        {"id": 8, "file_name": "000000000008.jpg", "width": W, "height": H},
    ],
    "annotations": [_ann(20, 7, 44, [16, 12, 32, 24]), _ann(21, 8, 46, [0, 24, 32, 24])],
    "categories": VAL_JSON["categories"],
}
VAL_LABELS = {
    "000000000001": "0 0.250000 0.500000 0.250000 0.500000\n79 0.125000 0.104167 0.250000 0.208333\n",
    "000000000002": "",
    "000000000003": "11 0.500000 0.500000 1.000000 1.000000\n",
}


def _images_zip(path: Path, split: str, stems: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for stem in stems:
            ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
            assert ok
            zf.writestr(f"{split}/{stem}.jpg", buf.tobytes())


def _annotations_zip(path: Path, val: dict[str, Any], train: dict[str, Any]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("annotations/instances_val2017.json", json.dumps(val))
        zf.writestr("annotations/instances_train2017.json", json.dumps(train))
        zf.writestr("annotations/captions_val2017.json", json.dumps({"annotations": []}))


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``val2017.zip``, ``train2017.zip`` and ``annotations_trainval2017.zip``."""
    d = tmp_path_factory.mktemp("coco_src")
    _images_zip(d / "val2017.zip", "val2017", [f"{i:012d}" for i in (1, 2, 3)], seed=0)
    _images_zip(d / "train2017.zip", "train2017", [f"{i:012d}" for i in (7, 8)], seed=1)
    _annotations_zip(d / coco.ANNOTATIONS_ZIP, VAL_JSON, TRAIN_JSON)
    return d


@pytest.fixture(autouse=True)
def _no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "RETRY_DELAY", 0.0)


# --------------------------------------------------------------------------------------------------
# A loopback HTTP server that honours Range (and can misbehave on purpose)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    root: Path
    requests: list[tuple[str, str | None]]
    cut: dict[str, int]  # file name -> bytes to send before dropping the connection (first request only)
    ignore_range: bool


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        srv.requests.append((name, rng))
        path = srv.root / name
        if "/" in name or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if rng and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        n = srv.cut.pop(name, None)
        self.wfile.write(body if n is None else body[:n])


@contextlib.contextmanager
def serve(root: Path, cut: dict[str, int] | None = None, ignore_range: bool = False) -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.root, srv.requests, srv.cut, srv.ignore_range = root, [], dict(cut or {}), ignore_range
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def _url(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_dir(folder: Path) -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted(folder.glob("*.txt"))}


def _labels(root: Path, split: str) -> dict[str, str]:
    return _read_dir(root / "labels" / split)


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith((".tmp-", ".old-")))


# --------------------------------------------------------------------------------------------------


@pytest.mark.cpu
def test_constants() -> None:
    assert len(coco.COCO80_NAMES) == len(coco.COCO80_TO_91) == 80
    assert list(coco.COCO80_TO_91) == sorted(set(coco.COCO80_TO_91))
    assert coco.COCO80_TO_91[0] == 1 and coco.COCO80_TO_91[11] == 13 and coco.COCO80_TO_91[-1] == 90
    assert set(range(1, 91)) - set(coco.COCO80_TO_91) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert coco.COCO80_NAMES[0] == "person" and coco.COCO80_NAMES[79] == "toothbrush"


@pytest.mark.cpu
def test_official_urls_and_checksums(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[str, str | None]] = []

    def fake_download(url: str, dest: Path, checksum: str | None = None, **kw: Any) -> Path:
        calls.append((url, checksum))
        raise DataError("stop")

    monkeypatch.setattr(coco, "download_file", fake_download)
    with pytest.raises(DataError, match="stop"):
        coco.prepare_coco(tmp_path / "c", progress=False)
    assert calls == [
        (
            "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
            "md5:f4bbac642086de4f52a3fdda2de5fa2c",
        )
    ]
    src = coco._Source(None)
    assert src.url("val2017.zip") == "http://images.cocodataset.org/zips/val2017.zip"
    assert (
        coco._Source("https://mirror.example/coco/").url("val2017.zip")
        == "https://mirror.example/coco/val2017.zip"
    )


@pytest.mark.cpu
def test_prepare_over_http(archives: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "coco"
    with serve(archives) as srv:
        with caplog.at_level(logging.INFO, logger="yolov9_qat.data"):
            out = coco.prepare_coco(root, source=_url(srv) + "/", progress=False)
        fetched = [name for name, _ in srv.requests if name.endswith(".zip")]
        assert sorted(fetched) == sorted([coco.ANNOTATIONS_ZIP, "val2017.zip", "train2017.zip"])

        assert out == root / "coco.yaml"
        assert _labels(root, "val2017") == VAL_LABELS
        assert _labels(root, "train2017") == {
            "000000000007": "39 0.500000 0.500000 0.500000 0.500000\n",  # id 44 (bottle) -> 39
            "000000000008": "40 0.250000 0.750000 0.500000 0.500000\n",  # id 46 (wine glass) -> 40
        }
        assert sorted(p.name for p in (root / "images" / "val2017").iterdir()) == [
            "000000000001.jpg",
            "000000000002.jpg",
            "000000000003.jpg",
        ]
        assert cv2.imread(str(root / "images" / "val2017" / "000000000001.jpg")).shape == (H, W, 3)
        assert (root / "annotations" / "instances_val2017.json").is_file()
        assert (root / "val2017.txt").read_text().splitlines() == [
            f"./images/val2017/{i:012d}.jpg" for i in (1, 2, 3)
        ]
        assert (root / "train2017.txt").read_text().splitlines() == [
            f"./images/train2017/{i:012d}.jpg" for i in (7, 8)
        ]
        assert not (root / "downloads").exists()  # archives deleted after extraction
        assert _leftovers(root) == []

        cfg = yaml.safe_load(out.read_text())
        assert cfg["path"] == str(root) and Path(cfg["path"]).is_absolute()
        assert (cfg["train"], cfg["val"], cfg["nc"]) == ("train2017.txt", "val2017.txt", 80)
        assert "test" not in cfg
        assert cfg["names"] == list(coco.COCO80_NAMES)
        assert cfg["category_ids"] == list(coco.COCO80_TO_91)
        assert cfg["coco_json"] == "annotations/instances_val2017.json"
        loaded = load_data_yaml(out)
        assert loaded["nc"] == 80 and loaded["val"] == str(root / "val2017.txt")

        stamp = json.loads((root / "labels" / ".version").read_text())
        counts = stamp["splits"]["val2017"]["counts"]
        assert counts == {
            "images": 3,
            "annotations": 5,
            "boxes": 3,
            "crowd": 1,
            "zero_area": 1,
            "empty": 1,
            "missing_images": 0,
        }
        assert "1 crowd" in caplog.text and "1 images without boxes" in caplog.text

        # Again: everything is in place, so nothing is downloaded and nothing is reconverted.
        before = len(srv.requests)
        mtime = (root / "labels" / "val2017" / "000000000001.txt").stat().st_mtime_ns
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="yolov9_qat.data"):
            coco.prepare_coco(root, source=_url(srv), progress=False)
        assert len(srv.requests) == before
        assert (root / "labels" / "val2017" / "000000000001.txt").stat().st_mtime_ns == mtime
        assert "already extracted" in caplog.text and "up to date" in caplog.text


@pytest.mark.cpu
def test_download_resumes_with_range(archives: Path, tmp_path: Path) -> None:
    src = archives / "val2017.zip"
    dest = tmp_path / "dl" / "val2017.zip"
    part = dest.with_name("val2017.zip.part")
    n = 1000
    with serve(archives, cut={"val2017.zip": n}) as srv:
        url = f"{_url(srv)}/val2017.zip"
        with pytest.raises(DataError, match="run again to resume") as err:
            download.download_file(url, dest, retries=0, progress=False)
        assert "\n" not in str(err.value) and str(err.value).startswith(f"could not download {url}: ")
        assert not dest.exists() and part.stat().st_size == n

        md5 = hashlib.md5(src.read_bytes()).hexdigest()
        assert download.download_file(url, dest, f"md5:{md5}", progress=False) == dest
        assert srv.requests == [("val2017.zip", None), ("val2017.zip", f"bytes={n}-")]
    assert dest.read_bytes() == src.read_bytes() and not part.exists()


@pytest.mark.cpu
def test_prepare_retries_an_interrupted_download(archives: Path, tmp_path: Path) -> None:
    with serve(archives, cut={"train2017.zip": 700, coco.ANNOTATIONS_ZIP: 300}) as srv:
        coco.prepare_coco(tmp_path / "c", source=_url(srv), progress=False)
        assert ("train2017.zip", "bytes=700-") in srv.requests
        assert (coco.ANNOTATIONS_ZIP, "bytes=300-") in srv.requests
    assert _labels(tmp_path / "c", "val2017") == VAL_LABELS
    assert len(list((tmp_path / "c" / "images" / "train2017").glob("*.jpg"))) == 2


@pytest.mark.cpu
def test_server_without_range_support_restarts(archives: Path, tmp_path: Path) -> None:
    dest = tmp_path / "val2017.zip"
    dest.with_name("val2017.zip.part").write_bytes(b"junk from an earlier attempt")
    with serve(archives, ignore_range=True) as srv:
        download.download_file(f"{_url(srv)}/val2017.zip", dest, progress=False)
        assert srv.requests == [("val2017.zip", "bytes=28-")]
    assert dest.read_bytes() == (archives / "val2017.zip").read_bytes()


@pytest.mark.cpu
def test_complete_part_is_finished_on_416(archives: Path, tmp_path: Path) -> None:
    dest = tmp_path / "val2017.zip"
    dest.with_name("val2017.zip.part").write_bytes((archives / "val2017.zip").read_bytes())
    with serve(archives) as srv:
        download.download_file(f"{_url(srv)}/val2017.zip", dest, progress=False)
    assert dest.read_bytes() == (archives / "val2017.zip").read_bytes()


@pytest.mark.cpu
def test_md5_sidecar(archives: Path, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    for f in archives.iterdir():
        (served / f.name).write_bytes(f.read_bytes())
    good = hashlib.md5((served / coco.ANNOTATIONS_ZIP).read_bytes()).hexdigest()
    (served / f"{coco.ANNOTATIONS_ZIP}.md5").write_text(f"{good}  {coco.ANNOTATIONS_ZIP}\n")
    (served / "val2017.zip.md5").write_text("0" * 32 + "\n")
    root = tmp_path / "c"
    with serve(served) as srv, pytest.raises(DataError, match="md5 check") as err:
        coco.prepare_coco(root, source=_url(srv), splits=["val2017"], progress=False)
    assert "\n" not in str(err.value)
    assert (root / "annotations" / "instances_val2017.json").is_file()  # its md5 matched
    assert not (root / "images").exists()
    assert list((root / "downloads").iterdir()) == []  # the bad download is gone, .part included
    assert _leftovers(root) == []


@pytest.mark.cpu
def test_unreachable_host(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(DataError) as err:
        coco.prepare_coco(tmp_path / "c", source=base, progress=False)
    msg = str(err.value)
    assert msg.startswith(f"could not download {base}/{coco.ANNOTATIONS_ZIP}: ") and "\n" not in msg


@pytest.mark.cpu
def test_http_404(archives: Path, tmp_path: Path) -> None:
    with serve(archives) as srv, pytest.raises(DataError, match=r"test2017\.zip: HTTP 404") as err:
        coco.prepare_coco(tmp_path / "c", source=_url(srv), splits=["test2017"], progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.cpu
def test_local_folder_source(archives: Path, tmp_path: Path) -> None:
    root = tmp_path / "c"
    out = coco.prepare_coco(root, source=str(archives), splits="val2017, train2017", progress=False)
    assert _labels(root, "val2017") == VAL_LABELS
    assert all((archives / n).is_file() for n in ("val2017.zip", "train2017.zip", coco.ANNOTATIONS_ZIP))
    assert not (root / "downloads").exists()
    assert yaml.safe_load(out.read_text())["train"] == "train2017.txt"


@pytest.mark.cpu
def test_test_split_images_only(archives: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _images_zip(src / "test2017.zip", "test2017", ["000000000100", "000000000101"], seed=2)
    root = tmp_path / "c"
    coco.prepare_coco(root, source=archives, splits=["val2017"], progress=False)
    out = coco.prepare_coco(root, source=src, splits=["test2017"], progress=False)
    assert (root / "test2017.txt").read_text().splitlines() == [
        "./images/test2017/000000000100.jpg",
        "./images/test2017/000000000101.jpg",
    ]
    assert not (root / "labels" / "test2017").exists()
    cfg = yaml.safe_load(out.read_text())
    assert (cfg["train"], cfg["val"], cfg["test"]) == ("val2017.txt", "val2017.txt", "test2017.txt")


@pytest.mark.cpu
def test_local_folder_missing_archive(archives: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / coco.ANNOTATIONS_ZIP).write_bytes((archives / coco.ANNOTATIONS_ZIP).read_bytes())
    with pytest.raises(DataError, match=r"COCO archive val2017\.zip not found in .*src"):
        coco.prepare_coco(tmp_path / "c", source=src, splits=["val2017"], progress=False)
    with pytest.raises(DataError, match="neither an http"):
        coco.prepare_coco(tmp_path / "c", source=tmp_path / "nowhere", progress=False)


def _flip_member_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[1]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.cpu
@pytest.mark.parametrize("damage", ["garbage", "truncated", "crc"])
def test_corrupt_archive(archives: Path, tmp_path: Path, damage: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / coco.ANNOTATIONS_ZIP).write_bytes((archives / coco.ANNOTATIONS_ZIP).read_bytes())
    good = (archives / "val2017.zip").read_bytes()
    bad = src / "val2017.zip"
    if damage == "garbage":
        bad.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    else:
        bad.write_bytes(good)
        _flip_member_byte(bad)
    root = tmp_path / "c"
    with pytest.raises(DataError, match=r"val2017\.zip") as err:
        coco.prepare_coco(root, source=src, splits=["val2017"], progress=False)
    assert "\n" not in str(err.value)
    assert not (root / "images").exists() and not (root / ".val2017.zip.extracted").exists()
    assert not (root / "labels").exists() and not (root / "coco.yaml").exists()
    assert _leftovers(root) == []
    assert bad.exists()  # a user's own file is never deleted

    # The same damaged archive over HTTP: the download is deleted so that a new run fetches it again.
    with serve(src) as srv, pytest.raises(DataError, match=r"val2017\.zip"):
        coco.prepare_coco(tmp_path / "h", source=_url(srv), splits=["val2017"], progress=False)
    assert not (tmp_path / "h" / "downloads" / "val2017.zip").exists()
    assert not (tmp_path / "h" / "images").exists()


@pytest.mark.cpu
def test_stale_label_caches(archives: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "c"
    coco.prepare_coco(root, source=archives, progress=False)
    caches = [root / "labels" / "val2017.cache", root / "labels" / "train2017.cache"]
    for c in caches:
        c.write_bytes(b"cache")

    coco.prepare_coco(root, source=archives, progress=False)  # nothing changed: caches stay
    assert all(c.exists() for c in caches)

    # New annotations (another version of the json): labels are reconverted and the caches go.
    changed = json.loads(json.dumps(VAL_JSON))
    changed["annotations"][0]["bbox"] = [0, 0, 32, 24]
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(changed))
    with caplog.at_level(logging.INFO, logger="yolov9_qat.data"):
        coco.prepare_coco(root, source=archives, progress=False)
    assert not any(c.exists() for c in caches)
    assert "deleted stale label caches" in caplog.text
    assert (
        (root / "labels" / "val2017" / "000000000001.txt")
        .read_text()
        .startswith("0 0.250000 0.250000 0.500000 0.500000\n")
    )

    # Labels from somewhere else (no version stamp, different content): reconverted, caches deleted.
    (root / "labels" / ".version").unlink()
    (root / "labels" / "val2017" / "000000000003.txt").write_text("5 0.1 0.1 0.2 0.2 0.3 0.3\n")
    caches[0].write_bytes(b"cache")
    coco.prepare_coco(root, source=archives, progress=False)
    assert not caches[0].exists()
    assert (root / "labels" / "val2017" / "000000000003.txt").read_text() == VAL_LABELS["000000000003"]
    assert _leftovers(root) == []


@pytest.mark.cpu
def test_no_images_and_val_only(archives: Path, tmp_path: Path) -> None:
    root = tmp_path / "c"
    with serve(archives) as srv:
        out = coco.prepare_coco(root, source=_url(srv), splits=["val2017"], images=False, progress=False)
        assert [name for name, _ in srv.requests if name.endswith(".zip")] == [coco.ANNOTATIONS_ZIP]
    assert not (root / "images").exists()
    assert _labels(root, "val2017") == VAL_LABELS
    assert (root / "val2017.txt").read_text().count("\n") == 3
    cfg = yaml.safe_load(out.read_text())
    assert cfg["train"] == cfg["val"] == "val2017.txt"  # train2017 not prepared: stands in
    stamp = json.loads((root / "labels" / ".version").read_text())
    assert stamp["splits"]["val2017"]["counts"]["missing_images"] == 0  # not checked without images


@pytest.mark.cpu
def test_coco_json_to_yolo(tmp_path: Path) -> None:
    js = tmp_path / "instances.json"
    js.write_text(json.dumps(VAL_JSON))
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    (img_dir / "000000000001.jpg").write_bytes(b"x")
    counts = coco.coco_json_to_yolo(js, tmp_path / "labels", img_dir)
    assert counts["boxes"] == 3 and counts["empty"] == 1 and counts["missing_images"] == 2
    assert _read_dir(tmp_path / "labels") == VAL_LABELS

    bad = json.loads(json.dumps(VAL_JSON))
    bad["annotations"][0]["category_id"] = 12  # a gap in COCO's ids
    js.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"not among COCO's 80 .*\[12\]"):
        coco.coco_json_to_yolo(js, tmp_path / "labels")
    assert _read_dir(tmp_path / "labels") == VAL_LABELS  # untouched
    js.write_text("{not json")
    with pytest.raises(DataError, match="cannot read COCO annotations"):
        coco.coco_json_to_yolo(js, tmp_path / "labels")


@pytest.mark.cpu
def test_bad_splits(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown COCO split"):
        coco.prepare_coco(tmp_path, splits=["val2014"], progress=False)
    with pytest.raises(UserError, match="no COCO splits"):
        coco.prepare_coco(tmp_path, splits=[], progress=False)
