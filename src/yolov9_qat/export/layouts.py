"""The output layouts of an exported graph and their default tensor names: one vocabulary for the
exporter, the runtimes, ``.io.json`` and the deployment configs (standard library only).

* ``plain``: ``images`` -> ``output0`` (B, 4 + nc, anchors); NMS is the consumer's.
* ``end2end``: ``images`` -> ``num_dets``, ``det_boxes``, ``det_scores``, ``det_classes``; NMS in the graph.
* ``deepstream``: ``input`` -> ``output`` (B, anchors, 6), DeepStream-Yolo's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

LAYOUTS: tuple[str, ...] = ("plain", "end2end", "deepstream")
IMAGES = "images"
PLAIN_OUTPUTS: tuple[str, ...] = ("output0",)
END2END_OUTPUTS: tuple[str, ...] = ("num_dets", "det_boxes", "det_scores", "det_classes")
DEEPSTREAM_INPUT = "input"
DEEPSTREAM_OUTPUTS: tuple[str, ...] = ("output",)

#: layout -> (input name, output names) the exporter writes unless told otherwise
DEFAULT_NAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "plain": (IMAGES, PLAIN_OUTPUTS),
    "end2end": (IMAGES, END2END_OUTPUTS),
    "deepstream": (DEEPSTREAM_INPUT, DEEPSTREAM_OUTPUTS),
}


def layout_of(
    output_names: Sequence[str], meta: Mapping[str, Any], output_shapes: Sequence[Sequence[Any]] = ()
) -> str | None:
    """The layout: the metadata's ``layout`` when it names one, else (older or renamed files) from the
    output names, the ``end2end`` metadata and, for one renamed rank-3 output, its last dimension;
    ``None`` when nothing tells."""
    if meta.get("layout") in LAYOUTS:
        return str(meta["layout"])
    names = tuple(output_names)
    if names == END2END_OUTPUTS or (meta.get("end2end") and len(names) == len(END2END_OUTPUTS)):
        return "end2end"
    if names == DEEPSTREAM_OUTPUTS:
        return "deepstream"
    if names == PLAIN_OUTPUTS:
        return "plain"
    if len(names) == 1 and len(output_shapes) == 1 and len(output_shapes[0]) == 3:
        return "deepstream" if output_shapes[0][-1] == 6 else "plain"
    return None


def read_metadata(model: Any) -> dict[str, Any]:
    """An ONNX model's ``metadata_props`` as :func:`yolov9_qat.export.onnx.metadata` wrote them (JSON values
    decoded), ``{}`` for foreign files."""
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except (json.JSONDecodeError, ValueError):
            out[p.key] = p.value
    return out
