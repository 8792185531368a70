"""FReLU's maximum: the cheaper backward gives PyTorch's gradients bit for bit, exports as ``Max``."""

from __future__ import annotations

import onnx
import pytest
import torch

from yolov9_qat.models.activations import FReLU, maximum


@pytest.mark.cpu
@pytest.mark.parametrize("ties", [False, True])
def test_maximum_gradients_equal_torch_bit_for_bit(ties: bool) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 8, 6, 6, generator=g)
    b = torch.randn(4, 8, 6, 6, generator=g)
    if ties:  # every third element tied: PyTorch splits the gradient evenly there
        b.view(-1)[::3] = a.view(-1)[::3]
    w = torch.randn(4, 8, 6, 6, generator=g)
    grads = []
    for fn in (maximum, torch.max):
        x, y = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        out = fn(x, y)
        (out * w).sum().backward()
        grads.append((out.detach(), x.grad, y.grad))
    for mine, theirs in zip(*grads, strict=True):
        assert torch.equal(mine, theirs)
    assert ties == bool((grads[0][1] == w / 2).any())


@pytest.mark.cpu
def test_frelu_exports_the_plain_max(tmp_path) -> None:
    m = FReLU(4).eval()
    path = tmp_path / "frelu.onnx"
    x = torch.randn(1, 4, 8, 8, requires_grad=True)  # grads recorded: the export still sees Max
    torch.onnx.export(m, (x,), str(path), opset_version=17, dynamo=False)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Max" in ops
    assert not any("Maximum" in op or "PythonOp" in op for op in ops)
