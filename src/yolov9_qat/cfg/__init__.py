"""Shipped configs: model YAMLs (``cfg/models``) and hyper-parameter YAMLs (``cfg/hyps``)."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from yolov9_qat.errors import ConfigError


def shipped(kind: str) -> list[str]:
    """Names of the shipped configs of one kind (``models`` or ``hyps``)."""
    folder = resources.files("yolov9_qat") / "cfg" / kind
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve(kind: str, name: str | Path) -> Path:
    """A YAML path: the file itself when it exists, else the shipped config of that (file) name.

    Upstream-style paths (``models/detect/gelan-c.yaml``, ``data/hyps/hyp.scratch-high.yaml``)
    resolve to the shipped config with the same name, so a user's habits carry over.
    """
    path = Path(name)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml")
    known = shipped(kind)
    if stem not in known:
        hint = difflib.get_close_matches(stem, known, n=1)
        extra = f" (did you mean {hint[0]}?)" if hint else ""
        what = "model config" if kind == "models" else "hyper-parameter file"
        raise ConfigError(f"{what} {str(name)!r} not found{extra}; known: {', '.join(known)}")
    return Path(str(resources.files("yolov9_qat") / "cfg" / kind / f"{stem}.yaml"))


def load_yaml(kind: str, name: str | Path) -> dict[str, Any]:
    path = resolve(kind, name)
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path} does not hold a mapping")
    return d


def load_hyp(name: str | Path = "hyp.scratch-high") -> dict[str, Any]:
    """Hyper-parameters: the shipped defaults overlaid with the given file's values."""
    hyp = load_yaml("hyps", "hyp.scratch-high")
    if str(name) not in ("", "hyp.scratch-high"):
        hyp.update(load_yaml("hyps", name))
    return hyp
