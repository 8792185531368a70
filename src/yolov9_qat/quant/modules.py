"""Quantized twins of the blocks whose quantizers are not on a convolution's input.

ModelOpt quantizes ``nn.Conv2d`` and ``nn.MaxPool2d`` itself; the twins here add the quantizers that
:data:`yolov9_qat.quant.rules.SITES` names for the model-level Concat, nearest Upsample, the residual
add of RepNBottleneck and the average pools of AConv / ADown, and (``ort`` placement only) the conv
blocks' pre-activation, sigmoid and output quantizers and the residual add's output. Each is a ModelOpt ``QuantModule``
(``_setup`` makes the quantizers; the block's class becomes a subclass of the twin in place), so
ModelOpt's tools (summaries, ONNX Q/DQ export) see them like its own modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from modelopt.torch.quantization.nn import QuantModuleRegistry, TensorQuantizer
from modelopt.torch.quantization.nn.modules.quant_module import QuantModule
from torch import nn

from yolov9_qat.models import blocks
from yolov9_qat.quant.rules import EXIT, GATE, PREACT, SUM


class QuantConcat(QuantModule):
    """Concat with one quantizer applied to every input (all inputs share one scale)."""

    def _setup(self) -> None:
        self._register_temp_attribute("input_quantizer", TensorQuantizer())

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.input_quantizer(t) for t in x], self.d)


class QuantUpsample(QuantModule):
    """nn.Upsample with a quantized input."""

    def _setup(self) -> None:
        self._register_temp_attribute("input_quantizer", TensorQuantizer())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.input_quantizer(x))


class QuantRepNBottleneck(QuantModule):
    """RepNBottleneck whose residual add has both inputs quantized."""

    def _setup(self) -> None:
        self._register_temp_attribute("shortcut_quantizer", TensorQuantizer())
        self._register_temp_attribute("branch_quantizer", TensorQuantizer())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        if not self.add:
            return y
        out = self.shortcut_quantizer(x) + self.branch_quantizer(y)
        total = self._modules.get(SUM)  # ``ort`` placement: the Add's output (QLinearAdd)
        return total(out) if total is not None else out


def _quantized_act(block: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """``ort`` placement: quantize the conv output, SiLU's sigmoid (SiLU as ``y * sigmoid(y)``, the
    ONNX graph's own form) and the activation's output."""
    y = getattr(block, PREACT)(y)
    gate = block._modules.get(GATE)
    y = y * gate(torch.sigmoid(y)) if gate is not None else block.act(y)
    return getattr(block, EXIT)(y)


class _ConvBlockQuantizers(QuantModule):
    def _setup(self) -> None:
        """Nothing here: :func:`~yolov9_qat.quant.quantize.prepare_qat_model` adds the quantizers
        that :func:`~yolov9_qat.quant.rules.sites_of` names (the sigmoid's only for SiLU), as it does
        the residual Add's output quantizer."""


class QuantConvBlock(_ConvBlockQuantizers):
    """Conv (BN folded) with the ``ort`` placement's quantizers around its activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _quantized_act(self, self.bn(self.conv(x)))


class QuantRepConvN(_ConvBlockQuantizers):
    """RepConvN (branches folded into ``conv``) with the ``ort`` placement's quantizers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "conv"):
            raise RuntimeError("the ort placement quantizes RepConvN in its fused form (model.fuse())")
        return _quantized_act(self, self.conv(x))


class QuantAConv(QuantModule):
    """AConv with a quantized average-pool input."""

    def _setup(self) -> None:
        self._register_temp_attribute("pool_quantizer", TensorQuantizer())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv1(blocks._smooth_pool(self.pool_quantizer(x)))


class QuantADown(QuantModule):
    """ADown with quantized average-pool and max-pool inputs."""

    def _setup(self) -> None:
        self._register_temp_attribute("pool_quantizer", TensorQuantizer())
        self._register_temp_attribute("maxpool_quantizer", TensorQuantizer())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = blocks._smooth_pool(self.pool_quantizer(x)).chunk(2, 1)
        return torch.cat((self.cv1(x1), self.cv2(F.max_pool2d(self.maxpool_quantizer(x2), 3, 2, 1))), 1)


#: original class -> quantized twin
TWINS: dict[type[nn.Module], type[QuantModule]] = {
    blocks.Concat: QuantConcat,
    nn.Upsample: QuantUpsample,
    blocks.RepNBottleneck: QuantRepNBottleneck,
    blocks.AConv: QuantAConv,
    blocks.ADown: QuantADown,
    # converted only in the ``ort`` placement (rules.ORT_SITES)
    blocks.Conv: QuantConvBlock,
    blocks.RepConvN: QuantRepConvN,
}


def register_twins() -> None:
    """Register the twins with ModelOpt's registry (idempotent; ``mtq.register`` semantics)."""
    for original, twin in TWINS.items():
        if original not in QuantModuleRegistry:
            QuantModuleRegistry.register({original: original.__name__})(twin)
