"""COCO 2017 for detection: download, verify, extract, convert to YOLO labels, write ``coco.yaml``.

The Python side of ``yolov9-qat data coco`` (upstream's ``scripts/get_coco.sh``). :func:`prepare_coco`
lays a folder out as::

    DIR/coco.yaml                          data config (absolute ``path``, 80 names, category ids)
    DIR/{split}.txt                        list of ``./images/{split}/<file>.jpg``
    DIR/images/{split}/<file>.jpg          from ``{split}.zip``
    DIR/annotations/instances_{split}.json from ``annotations_trainval2017.zip``
    DIR/labels/{split}/<stem>.txt          YOLO labels ``class cx cy w h`` (normalised)
    DIR/labels/.version                    what the labels were converted from (stale-cache guard)

Archives come from the official COCO server, from a mirror with the same file names, or from a local
folder. Downloads resume from ``<file>.part`` with HTTP Range requests and are checked (known MD5 of
the official archives, or a ``<file>.md5`` served beside a mirror's archive, and always the zip's own
CRCs) before anything is extracted. Every step writes to a temporary name and renames into place, so
an interrupted run leaves either the old state or the new one, and running again finishes the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import filelock
import yaml

from yolov9_qat.errors import DataError, UserError
from yolov9_qat.utils.download import (
    TIMEOUT,
    check_space,
    download_file,
    file_digest,
    md5_from_text,
    one_line,
    sidecar_checksum,
    verify_checksum,
)
from yolov9_qat.utils.files import atomic_write_json, atomic_write_text

__all__ = [
    "ANNOTATIONS_ZIP",
    "CHECKSUMS",
    "COCO80_NAMES",
    "COCO80_TO_91",
    "COCO_URL",
    "LABELS_VERSION",
    "SPLITS",
    "coco_json_to_yolo",
    "download_file",
    "prepare_coco",
]

LOGGER = logging.getLogger("yolov9_qat.data")

#: The 80 COCO detection classes, in class-index order (the order of their category ids).
COCO80_NAMES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

#: Class index (0..79) -> official COCO category id (1..90, with gaps: 12, 26, 29, 30, 45, 66, 68, 69,
#: 71 and 83 are not used by the detection task).
COCO80_TO_91: tuple[int, ...] = (
    *range(1, 12),
    *range(13, 26),
    27,
    28,
    *range(31, 45),
    *range(46, 66),
    67,
    70,
    *range(72, 83),
    *range(84, 91),
)

_CATEGORY_TO_CLASS: dict[int, int] = {cat: i for i, cat in enumerate(COCO80_TO_91)}

#: Official download server; images are under ``zips/``, annotations under ``annotations/``.
COCO_URL = "http://images.cocodataset.org"
ANNOTATIONS_ZIP = "annotations_trainval2017.zip"
#: Splits that have an images archive. ``test2017`` has no public instance annotations: images only.
SPLITS: tuple[str, ...] = ("train2017", "val2017", "test2017")
_ANNOTATED = ("train2017", "val2017")

#: MD5 of the official archives (as published by torchvision / MLPerf / PaddleDetection and others).
CHECKSUMS: dict[str, str] = {
    "train2017.zip": "md5:cced6f7f71b7629ddf16f17bbcfab6b2",
    "val2017.zip": "md5:442b8da7639aecaf257c1dceb8ba8c80",
    "test2017.zip": "md5:77ad2c53ac5d0aea611d422c0938fb35",
    "annotations_trainval2017.zip": "md5:f4bbac642086de4f52a3fdda2de5fa2c",
}

#: Bump when :func:`coco_json_to_yolo` writes different labels from the same json (forces reconversion).
LABELS_VERSION = 1

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# --------------------------------------------------------------------------------------------------
# Archives


def _tmp_dir(parent: Path, name: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=parent))


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` onto ``dst`` (same file system), replacing ``dst`` if it exists."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".old-{dst.name}-", dir=dst.parent))
        os.replace(dst, trash / dst.name)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def _open_zip(path: Path) -> zipfile.ZipFile:
    """Open and fully check ``path`` (every member's CRC); :class:`DataError` if it is not sound."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"archive {path} is not a readable zip file ({one_line(e)})") from e
    try:
        bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as e:  # e.g. truncated data
        zf.close()
        raise DataError(f"archive {path} is damaged ({one_line(e)})") from e
    if bad is not None:
        zf.close()
        raise DataError(f"archive {path} is damaged: member {bad} fails its CRC check")
    for name in zf.namelist():
        p = PurePosixPath(name.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts:
            zf.close()
            raise DataError(f"archive {path} holds an unsafe path {name!r}; refusing to extract it")
    return zf


def _extract(archive: Path, root: Path) -> Path:
    """Check ``archive`` and extract it into a new temporary folder under ``root``; return that folder."""
    with _open_zip(archive) as zf:
        check_space(root, sum(i.file_size for i in zf.infolist()), f"extracting {archive.name}")
        tmp = _tmp_dir(root, archive.stem)
        try:
            zf.extractall(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return tmp


def _marker(root: Path, archive_name: str) -> Path:
    return root / f".{archive_name}.extracted"


def _annotations_ready(root: Path, splits: Sequence[str]) -> bool:
    return _marker(root, ANNOTATIONS_ZIP).is_file() and all(
        (root / "annotations" / f"instances_{s}.json").is_file() for s in splits if s in _ANNOTATED
    )


def _images_ready(root: Path, split: str) -> bool:
    return _marker(root, f"{split}.zip").is_file() and (root / "images" / split).is_dir()


def _install_annotations(tmp: Path, root: Path) -> int:
    src = tmp / "annotations"
    if not src.is_dir():
        raise DataError(
            f"{ANNOTATIONS_ZIP} has no top-level 'annotations/' folder (not the COCO annotations archive?)"
        )
    dst = root / "annotations"
    if not dst.exists():
        os.replace(src, dst)
        return sum(1 for _ in dst.iterdir())
    n = 0
    for f in src.iterdir():  # keep other files the user put there; replace ours one by one
        target = dst / f.name
        if f.is_dir():
            _replace_dir(f, target)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(f, target)
        n += 1
    return n


def _install_images(tmp: Path, root: Path, split: str) -> int:
    src = tmp / split
    if not src.is_dir():
        entries = list(tmp.iterdir())
        if entries and all(e.is_file() and e.suffix.lower() in _IMAGE_SUFFIXES for e in entries):
            src = tmp  # images at the top level of the archive
        else:
            raise DataError(f"{split}.zip has no top-level '{split}/' folder of images")
    n = sum(1 for e in src.iterdir() if e.suffix.lower() in _IMAGE_SUFFIXES)
    if n == 0:
        raise DataError(f"{split}.zip holds no images")
    _replace_dir(src, root / "images" / split)
    return n


# --------------------------------------------------------------------------------------------------
# Labels


def _convert(
    json_path: Path, labels_dir: Path, image_dir: Path | None
) -> tuple[dict[str, int], str, list[str]]:
    """:func:`coco_json_to_yolo`, also returning the labels' content hash and the sorted image names."""
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read COCO annotations {json_path}: {one_line(e)}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{json_path} is not a COCO instances file (no 'images' list)")

    images: dict[Any, tuple[str, float, float]] = {}
    for im in data["images"]:
        try:
            name, w, h = str(im["file_name"]), float(im["width"]), float(im["height"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{json_path}: image entry {im!r:.80} lacks file_name/width/height") from e
        if w <= 0 or h <= 0:
            raise DataError(f"{json_path}: image {name} has size {w:g}x{h:g}")
        images[im.get("id")] = (name, w, h)

    counts = dict.fromkeys(
        ("images", "annotations", "boxes", "crowd", "zero_area", "empty", "missing_images"), 0
    )
    counts["images"] = len(images)
    rows: dict[Any, list[str]] = {k: [] for k in images}
    unknown: set[Any] = set()
    for ann in data.get("annotations") or []:
        counts["annotations"] += 1
        if ann.get("iscrowd", 0):
            counts["crowd"] += 1
            continue
        cat = ann.get("category_id")
        if cat not in _CATEGORY_TO_CLASS:
            unknown.add(cat)
            continue
        img = images.get(ann.get("image_id"))
        if img is None:
            raise DataError(
                f"{json_path}: annotation {ann.get('id')} refers to unknown image {ann.get('image_id')}"
            )
        _, w, h = img
        try:
            x, y, bw, bh = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{json_path}: annotation {ann.get('id')} has no valid bbox") from e
        x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
        x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
        if bw <= 0 or bh <= 0 or x2 <= x1 or y2 <= y1:
            counts["zero_area"] += 1
            continue
        cx, cy, nw, nh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
        rows[ann["image_id"]].append(f"{_CATEGORY_TO_CLASS[cat]} {cx:.6f} {cy:.6f} {nw:.6f} {nh:.6f}")
        counts["boxes"] += 1
    if unknown:
        shown = sorted(unknown, key=str)[:10]
        raise DataError(
            f"{json_path} uses category ids that are not among COCO's 80 detection classes: {shown}"
        )

    digest = hashlib.sha256()
    stems: set[str] = set()
    names: list[str] = []
    tmp = _tmp_dir(labels_dir.parent, labels_dir.name)
    try:
        for key, (name, _, _) in sorted(images.items(), key=lambda kv: kv[1][0]):
            base = PurePosixPath(name.replace("\\", "/"))
            stem = base.stem
            names.append(base.name)
            if stem in stems:
                raise DataError(f"{json_path}: two images share the file name stem {stem!r}")
            stems.add(stem)
            text = "".join(r + "\n" for r in rows[key])
            (tmp / f"{stem}.txt").write_text(text, encoding="utf-8")
            digest.update(f"{stem}\0{text}\0".encode())
            counts["empty"] += not text
            if image_dir is not None and not (image_dir / base.name).is_file():
                counts["missing_images"] += 1
        _replace_dir(tmp, labels_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts, digest.hexdigest(), names


def coco_json_to_yolo(
    json_path: str | os.PathLike[str],
    labels_dir: str | os.PathLike[str],
    image_dir: str | os.PathLike[str] | None = None,
) -> dict[str, int]:
    """Convert a COCO ``instances_*.json`` to one YOLO label file per image in ``labels_dir``.

    Each line is ``class cx cy w h``: ``class`` the index of the category id in :data:`COCO80_TO_91`,
    the box clipped to the image and normalised by its size. Crowd (``iscrowd=1``) and zero-area boxes
    are skipped; an image without boxes gets an empty file. ``labels_dir`` is replaced as a whole
    (built beside it, then renamed). When ``image_dir`` is given, images listed in the json but absent
    there are counted. Returns counts: ``images``, ``annotations`` (in the json), ``boxes`` (written),
    ``crowd``, ``zero_area`` (skipped), ``empty`` (images without boxes), ``missing_images``.
    Raises :class:`DataError` on an unreadable json or a category id outside the 80 classes.
    """
    counts, _, _ = _convert(
        Path(json_path), Path(labels_dir), Path(image_dir) if image_dir is not None else None
    )
    return counts


def _json_key(json_path: Path) -> str:
    return f"v{LABELS_VERSION}:sha256:{file_digest(json_path, 'sha256')}"


def _read_stamp(path: Path) -> dict[str, Any]:
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) and isinstance(stamp.get("splits"), dict) else {}


def _delete_caches(labels_root: Path) -> list[str]:
    gone = []
    for cache in sorted(labels_root.glob("*.cache")):
        with contextlib.suppress(FileNotFoundError):
            cache.unlink()
            gone.append(cache.name)
    return gone


def _convert_split(root: Path, split: str, images: bool) -> dict[str, int] | None:
    """Convert ``split``'s json unless ``labels/.version`` says it is already done; None when skipped."""
    labels_root = root / "labels"
    stamp_path = labels_root / ".version"
    json_path = root / "annotations" / f"instances_{split}.json"
    key = _json_key(json_path)
    stamp = _read_stamp(stamp_path)
    if stamp.get("splits", {}).get(split, {}).get("source") == key and (labels_root / split).is_dir():
        LOGGER.info("labels/%s: up to date (%s)", split, stamp_path)
        if not (root / f"{split}.txt").is_file():
            _write_list(root, split, _json_image_names(json_path))
        return None
    image_dir = root / "images" / split if images else None
    counts, content, names = _convert(json_path, labels_root / split, image_dir)
    _write_list(root, split, names)
    gone = _delete_caches(labels_root)
    if gone:
        LOGGER.info("labels: deleted stale label caches %s", ", ".join(gone))
    stamp = _read_stamp(stamp_path) or {"splits": {}}
    stamp["labels_version"] = LABELS_VERSION
    stamp["splits"][split] = {"source": key, "content": f"sha256:{content}", "counts": counts}
    atomic_write_json(stamp_path, stamp)
    LOGGER.info(
        "labels/%s: %d images, %d boxes (%d crowd and %d zero-area annotations skipped, "
        "%d images without boxes%s)",
        split,
        counts["images"],
        counts["boxes"],
        counts["crowd"],
        counts["zero_area"],
        counts["empty"],
        f", {counts['missing_images']} images missing" if images else "",
    )
    return counts


def _json_image_names(json_path: Path) -> list[str]:
    with open(json_path, encoding="utf-8") as f:
        return sorted(
            PurePosixPath(str(im["file_name"]).replace("\\", "/")).name for im in json.load(f)["images"]
        )


def _write_list(root: Path, split: str, names: Sequence[str]) -> None:
    """Write ``DIR/{split}.txt``: one ``./images/{split}/<name>`` line per image."""
    atomic_write_text(root / f"{split}.txt", "".join(f"./images/{split}/{n}\n" for n in names))
    LOGGER.info("%s.txt: %d images", split, len(names))


def _write_yaml(root: Path) -> Path:
    have = [s for s in SPLITS if (root / f"{s}.txt").is_file()]
    train = "train2017" if "train2017" in have else None
    val = "val2017" if "val2017" in have else None
    if train is None or val is None:
        present = [s for s in have if s in _ANNOTATED]
        if not present:
            raise DataError(f"{root} holds neither train2017 nor val2017; prepare at least one of them")
        stand_in = present[0]
        LOGGER.warning(
            "coco.yaml: %s is not prepared; '%s' points at %s.txt until it is",
            "train2017" if train is None else "val2017",
            "train" if train is None else "val",
            stand_in,
        )
        train, val = train or stand_in, val or stand_in
    cfg: dict[str, Any] = {"path": str(root), "train": f"{train}.txt", "val": f"{val}.txt"}
    if "test2017" in have:
        cfg["test"] = "test2017.txt"
    cfg["nc"] = len(COCO80_NAMES)

    def dump(obj: dict[str, Any], flow: bool | None) -> str:
        return yaml.safe_dump(obj, sort_keys=False, default_flow_style=flow, width=100, allow_unicode=True)

    header = (
        "# COCO 2017 detection, written by `yolov9-qat data coco`.\n"
        "# category_ids[i] is the official COCO category id of class i (for scoring against coco_json).\n"
    )
    body = (
        dump(cfg, False)
        + dump({"names": list(COCO80_NAMES)}, False)
        + dump({"coco_json": "annotations/instances_val2017.json"}, False)
        + dump({"category_ids": list(COCO80_TO_91)}, None)
    )
    return atomic_write_text(root / "coco.yaml", header + body)


# --------------------------------------------------------------------------------------------------
# Entry point


class _Source:
    """Where the archives come from: the official server, a mirror base URL, or a local folder."""

    def __init__(self, source: str | os.PathLike[str] | None) -> None:
        self.folder: Path | None = None
        self.base: str | None = None
        self.official = source is None
        if source is None:
            return
        text = os.fspath(source).strip()
        if text.lower().startswith(("http://", "https://")):
            self.base = text.rstrip("/")
            return
        if text.lower().startswith("file://"):
            text = urllib.request.url2pathname(text[len("file://") :])
        folder = Path(os.path.expanduser(text)).resolve()
        if not folder.is_dir():
            raise DataError(f"COCO source {source} is neither an http(s) URL nor an existing folder")
        self.folder = folder

    def url(self, name: str) -> str:
        if self.base is not None:
            return f"{self.base}/{name}"
        sub = "annotations" if name == ANNOTATIONS_ZIP else "zips"
        return f"{COCO_URL}/{sub}/{name}"

    def __str__(self) -> str:
        return str(self.folder) if self.folder is not None else self.base or COCO_URL


def _obtain(
    src: _Source, name: str, downloads: Path, progress: bool, retries: int, timeout: float
) -> tuple[Path, bool]:
    """The local path of archive ``name`` and whether it was downloaded (and may be deleted later)."""
    if src.folder is not None:
        path = src.folder / name
        if not path.is_file():
            raise DataError(f"COCO archive {name} not found in {src.folder}")
        sidecar = src.folder / f"{name}.md5"
        if sidecar.is_file():
            checksum = md5_from_text(sidecar.read_text(errors="replace"), str(sidecar))
            verify_checksum(path, checksum, f"archive {path}", delete=False)
        return path, False
    url = src.url(name)
    dest = downloads / name
    if not dest.is_file():
        checksum = CHECKSUMS.get(name) if src.official else sidecar_checksum(url, timeout)
        LOGGER.info("downloading %s", url)
        download_file(url, dest, checksum, timeout=timeout, retries=retries, progress=progress)
    return dest, True


def _unpack(archive: Path, downloaded: bool, install: Callable[[Path], int], root: Path, keep: bool) -> int:
    """Check + extract ``archive`` and hand the temp folder to ``install``; drop a damaged download."""
    try:
        tmp = _extract(archive, root)
    except DataError:
        if downloaded:
            archive.unlink(missing_ok=True)
            LOGGER.warning("deleted the damaged download %s; run again to fetch it anew", archive)
        raise
    try:
        n = install(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(_marker(root, archive.name), {"archive": archive.name, "files": n})
    if downloaded and not keep:
        archive.unlink(missing_ok=True)
    return n


def prepare_coco(
    dir: str | os.PathLike[str],
    source: str | os.PathLike[str] | None = None,
    splits: Sequence[str] = ("train2017", "val2017"),
    images: bool = True,
    progress: bool = True,
    *,
    keep_archives: bool = False,
    retries: int = 3,
    timeout: float = TIMEOUT,
) -> Path:
    """Download (or copy from ``source``), verify, extract and convert COCO 2017; return ``DIR/coco.yaml``.

    ``source``: None for the official server, an ``http(s)://`` base URL holding ``{split}.zip`` and
    ``annotations_trainval2017.zip``, or a local folder holding those archives. ``splits`` are among
    ``train2017``, ``val2017``, ``test2017`` (images only; a comma-separated string works too).
    ``images=False`` fetches annotations only (labels and list files are still written). Steps already
    done are skipped; downloaded archives are deleted after extraction unless ``keep_archives``.
    Progress and what was done (skipped, resumed, converted, caches deleted) go to the
    ``yolov9_qat.data`` logger. Raises :class:`DataError` / :class:`UserError` with a one-line message.
    """
    if isinstance(splits, str):  # "train2017,val2017" as typed on the command line
        splits = splits.split(",")
    splits = list(dict.fromkeys(s.strip() for s in splits if s.strip()))
    if not splits:
        raise UserError("no COCO splits given (choose from train2017, val2017, test2017)")
    wrong = [s for s in splits if s not in SPLITS]
    if wrong:
        raise UserError(f"unknown COCO split(s) {', '.join(wrong)}; choose from {', '.join(SPLITS)}")
    src = _Source(source)
    root = Path(os.path.abspath(os.path.expanduser(os.fspath(dir))))
    root.mkdir(parents=True, exist_ok=True)
    downloads = root / "downloads"
    annotated = [s for s in splits if s in _ANNOTATED]

    lock = filelock.FileLock(str(root / ".coco.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout as e:
        raise DataError(f"another 'yolov9-qat data coco' is already working in {root}") from e
    try:
        LOGGER.info("COCO: preparing %s in %s from %s", ", ".join(splits), root, src)
        if annotated:
            if _annotations_ready(root, annotated):
                LOGGER.info("annotations: already extracted")
            else:
                archive, downloaded = _obtain(src, ANNOTATIONS_ZIP, downloads, progress, retries, timeout)
                n = _unpack(archive, downloaded, lambda t: _install_annotations(t, root), root, keep_archives)
                LOGGER.info("annotations: extracted %d files", n)
                for s in annotated:
                    if not (root / "annotations" / f"instances_{s}.json").is_file():
                        raise DataError(f"{ANNOTATIONS_ZIP} did not contain annotations/instances_{s}.json")
        if images:
            for split in splits:
                if _images_ready(root, split):
                    LOGGER.info("images/%s: already extracted", split)
                    continue
                archive, downloaded = _obtain(src, f"{split}.zip", downloads, progress, retries, timeout)
                n = _unpack(
                    archive, downloaded, lambda t, s=split: _install_images(t, root, s), root, keep_archives
                )
                LOGGER.info("images/%s: extracted %d images", split, n)
        with contextlib.suppress(OSError):
            downloads.rmdir()  # only when empty
        for split in annotated:
            _convert_split(root, split, images)
        if "test2017" in splits:  # no annotations: list what the archive held
            folder = root / "images" / "test2017"
            if folder.is_dir():
                names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
                _write_list(root, "test2017", names)
            else:
                LOGGER.warning("test2017: no images (--no-images) and no annotations; no list file written")
        out = _write_yaml(root)
        LOGGER.info("COCO: wrote %s", out)
        return out
    finally:
        lock.release()
