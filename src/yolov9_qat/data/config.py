"""Data set description files (upstream YOLOv5/YOLOv9 ``data.yaml``) and the image <-> label path rule."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from yolov9_qat.errors import DataError

#: Image file suffixes the data sets accept (lower case, without the dot).
IMG_FORMATS: tuple[str, ...] = ("bmp", "jpeg", "jpg", "png", "tif", "tiff", "webp")

#: The keys of a data.yaml that name image sources (a folder, a list file, or a list of those);
#: ``select`` is the optional split that model selection uses (see ``dataset.selection_split``).
SPLIT_KEYS: tuple[str, ...] = ("train", "val", "test", "select")


def img2label_path(img_path: str | os.PathLike[str]) -> str:
    """The label file of an image, by the upstream rule.

    The last ``/images/`` component of the path becomes ``/labels/`` and the suffix becomes ``.txt``;
    an image with no ``images`` folder above it has its label file beside it.
    """
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    p = sb.join(os.fspath(img_path).rsplit(sa, 1))
    return os.path.splitext(p)[0] + ".txt"


def img2label_paths(img_paths: list[str]) -> list[str]:
    """:func:`img2label_path` for each path."""
    return [img2label_path(p) for p in img_paths]


def _resolve(entry: Any, root: Path, key: str, yaml_path: Path, check_exists: bool) -> str | list[str]:
    if isinstance(entry, (list, tuple)):
        if not entry:
            raise DataError(f"data config {yaml_path}: '{key}' is an empty list")
        return [_resolve(e, root, key, yaml_path, check_exists) for e in entry]  # type: ignore[misc]
    if not isinstance(entry, (str, os.PathLike)) or not os.fspath(entry).strip():
        raise DataError(f"data config {yaml_path}: '{key}' must be a path or a list of paths, got {entry!r}")
    p = Path(os.path.expanduser(os.fspath(entry).strip()))
    if not p.is_absolute():
        p = root / p
    p = Path(os.path.abspath(p))
    if check_exists and not p.exists():
        raise DataError(f"data config {yaml_path}: '{key}' path {p} does not exist")
    return str(p)


def _names(cfg: dict[str, Any], yaml_path: Path) -> list[str]:
    names = cfg.get("names")
    nc = cfg.get("nc")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
        raise DataError(f"data config {yaml_path}: 'nc' must be a positive integer, got {nc!r}")
    if names is None:
        if nc is None:
            raise DataError(f"data config {yaml_path}: needs 'names' (a list or an {{id: name}} mapping)")
        return [f"class{i}" for i in range(nc)]
    if isinstance(names, dict):
        try:
            items = sorted((int(k), str(v)) for k, v in names.items())
        except (TypeError, ValueError) as e:
            raise DataError(f"data config {yaml_path}: 'names' keys must be integer class ids ({e})") from e
        ids = [k for k, _ in items]
        if ids != list(range(len(ids))):
            raise DataError(
                f"data config {yaml_path}: 'names' ids must be 0..{len(ids) - 1} without gaps, got {ids}"
            )
        out = [v for _, v in items]
    elif isinstance(names, (list, tuple)):
        out = [str(v) for v in names]
    else:
        raise DataError(f"data config {yaml_path}: 'names' must be a list or a mapping, got {names!r}")
    if not out:
        raise DataError(f"data config {yaml_path}: 'names' is empty")
    if nc is not None and nc != len(out):
        raise DataError(f"data config {yaml_path}: nc={nc} but 'names' lists {len(out)} classes")
    return out


def load_data_yaml(path: str | os.PathLike[str], check_exists: bool = True) -> dict[str, Any]:
    """Read and validate an upstream-style ``data.yaml``.

    ``path`` (the data set root) is relative to the yaml's folder when relative and defaults to that
    folder; ``train`` / ``val`` / optional ``test`` are folders of images, ``.txt`` list files or lists of
    those, relative to the root. Returns a new dict with those resolved to absolute path strings (a list
    stays a list), ``names`` as a list, ``nc`` set to ``len(names)``, ``yaml_file`` the absolute yaml
    path, and every other key (``coco_json``, ``synthetic``, ...) kept as it was.

    ``check_exists=False`` skips the existence checks (for data sets generated after the config is read).
    Raises :class:`DataError` on a missing or unparsable file, a missing ``train``/``val``, a path that
    does not exist, or ``names``/``nc`` that disagree.
    """
    yaml_path = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if not yaml_path.is_file():
        raise DataError(f"data config {yaml_path} does not exist")
    try:
        cfg = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        reason = " ".join(str(e).split())
        raise DataError(f"data config {yaml_path} cannot be read as YAML: {reason}") from e
    if not isinstance(cfg, dict):
        raise DataError(f"data config {yaml_path} must be a YAML mapping, got {type(cfg).__name__}")
    out: dict[str, Any] = dict(cfg)

    root_entry = cfg.get("path")
    if root_entry in (None, ""):
        root = yaml_path.parent
    else:
        root = Path(os.path.expanduser(str(root_entry)))
        if not root.is_absolute():
            root = yaml_path.parent / root
        root = Path(os.path.abspath(root))
        if check_exists and not root.is_dir():
            raise DataError(f"data config {yaml_path}: 'path' {root} is not a folder")
    out["path"] = str(root)

    for key in ("train", "val"):
        if cfg.get(key) in (None, "", []):
            raise DataError(
                f"data config {yaml_path}: missing '{key}' (a folder, list file or list of those)"
            )
    for key in SPLIT_KEYS:
        entry = cfg.get(key)
        if entry in (None, "", []):
            out[key] = None
            continue
        out[key] = _resolve(entry, root, key, yaml_path, check_exists)

    out["names"] = _names(cfg, yaml_path)
    out["nc"] = len(out["names"])
    out["yaml_file"] = str(yaml_path)
    return out
