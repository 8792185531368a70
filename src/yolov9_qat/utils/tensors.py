"""Small tensor helpers shared by the quantization code."""

from __future__ import annotations

from typing import Any

import torch


def tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in ``obj`` (a tensor, or lists / tuples / dicts of them, nested), in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors(o)]
    return []
