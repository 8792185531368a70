"""Reparameterization: YOLOv9 (dual head, auxiliary branch) -> GELAN "converted" model.

The auxiliary branch only helps training. The converted model keeps the layers the main branch's
outputs depend on and the main half of the DualDDetect head (``cv4``/``cv5``/``dfl2``), which become
the DDetect head's ``cv2``/``cv3``/``dfl``. Which YOLOv9 layer lands on which GELAN layer is worked
out from the graph, not from per-model index tables: the ancestors of the main head inputs, in
order, matched type by type against the GELAN config (a leading ``Silence`` that GELAN lacks is
skipped), and the wiring of every matched layer is checked before any weight is copied.
"""

from __future__ import annotations

import torch

from yolov9_qat.errors import ConfigError
from yolov9_qat.models.yolo import DetectionModel

_INPUT = -1000  # marker for "the image"


def _abs_from(f: int | list[int], i: int) -> list[int]:
    return [i - 1 if j == -1 else j for j in ([f] if isinstance(f, int) else f)]


def main_branch_layers(model: DetectionModel) -> list[int]:
    """Indices of the layers the main (non-auxiliary) head inputs depend on, in order."""
    head = model.head
    todo = list(_abs_from(head.f, head.i)[head.nl :])
    seen: set[int] = set()
    while todo:
        j = todo.pop()
        if j < 0 or j in seen:
            continue
        seen.add(j)
        todo.extend(_abs_from(model.model[j].f, j) if j > 0 else [])
    return sorted(seen)


def layer_mapping(src: DetectionModel, dst: DetectionModel) -> dict[int, int]:
    """GELAN layer index -> YOLOv9 layer index, checked for type and wiring."""
    if not src.is_dual:
        raise ConfigError(f"{src.cfg_name!r} has no auxiliary branch (its head is not DualDDetect)")
    if dst.is_dual:
        raise ConfigError(f"target config {dst.cfg_name!r} is a dual-head model; give a GELAN config")
    keep = main_branch_layers(src)
    mapping: dict[int, int] = {}
    p = 0
    for j, layer in enumerate(dst.model[:-1]):
        while p < len(keep) and src.model[keep[p]].type == "Silence" and layer.type != "Silence":
            p += 1
        if p >= len(keep) or src.model[keep[p]].type != layer.type:
            got = src.model[keep[p]].type if p < len(keep) else "nothing"
            raise ConfigError(
                f"{dst.cfg_name!r} does not match the main branch of {src.cfg_name!r}: "
                f"GELAN layer {j} is {layer.type}, YOLOv9 has {got} there"
            )
        mapping[j] = keep[p]
        p += 1
    if any(src.model[k].type != "Silence" for k in keep[p:]):
        raise ConfigError(f"{dst.cfg_name!r} is shorter than the main branch of {src.cfg_name!r}")

    inverse = {v: k for k, v in mapping.items()}

    def src_ref(k: int) -> int:  # a YOLOv9 layer index as seen from GELAN (skipped Silence = its input)
        while k >= 0 and k not in inverse:
            if src.model[k].type != "Silence":
                raise ConfigError(f"YOLOv9 layer {k} ({src.model[k].type}) has no GELAN counterpart")
            k = k - 1 if k > 0 else _INPUT
        return inverse.get(k, _INPUT)

    for j, k in mapping.items():
        want = [_INPUT if x < 0 else x for x in _abs_from(dst.model[j].f, j)]
        have = [src_ref(x) if x >= 0 else _INPUT for x in _abs_from(src.model[k].f, k)]
        if want != have:
            raise ConfigError(
                f"{dst.cfg_name!r} layer {j} takes {want} but YOLOv9 layer {k} takes {have} (as GELAN layers)"
            )
    main_inputs = [src_ref(x) for x in _abs_from(src.head.f, src.head.i)[src.head.nl :]]
    if main_inputs != _abs_from(dst.head.f, dst.head.i):
        raise ConfigError(
            f"{dst.cfg_name!r} head reads {dst.head.f}, the YOLOv9 main head reads {main_inputs}"
        )
    return mapping


def reparameterize(src: DetectionModel, gelan_cfg: str | dict, check: bool = True) -> DetectionModel:
    """The converted GELAN model holding ``src``'s main-branch weights (eval mode)."""
    dst = DetectionModel(gelan_cfg, nc=src.nc, activation=src.activation, names=src.names)
    if src.fused:
        dst.fuse()
    mapping = layer_mapping(src, dst)
    with torch.no_grad():
        for j, k in mapping.items():
            try:
                dst.model[j].load_state_dict(src.model[k].state_dict())
            except RuntimeError as e:
                raise ConfigError(
                    f"{dst.cfg_name!r} layer {j} ({dst.model[j].type}) does not fit YOLOv9 layer {k}: "
                    f"{str(e).splitlines()[-1].strip()}"
                ) from None
        sh, dh = src.head, dst.head
        for to, frm in ((dh.cv2, sh.cv4), (dh.cv3, sh.cv5), (dh.dfl, sh.dfl2)):
            try:
                to.load_state_dict(frm.state_dict())
            except RuntimeError as e:
                raise ConfigError(
                    f"head of {dst.cfg_name!r} does not fit the YOLOv9 main head: {e}"
                ) from None
    dst.eval()
    meta_src = src.cfg_name
    dst.yaml["converted_from"] = meta_src
    if check:
        check_equivalent(src, dst)
    return dst


def check_equivalent(src: DetectionModel, dst: DetectionModel, size: int = 128, atol: float = 1e-3) -> float:
    """Max abs difference of the converted model and the YOLOv9 main branch on a random image."""
    was = src.training
    src.eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = src(x), dst(x)
    src.train(was)
    err = float((a - b).abs().max())
    if not err <= atol:
        raise ConfigError(f"converted model differs from the YOLOv9 main branch by {err:.3g} (> {atol})")
    return err
