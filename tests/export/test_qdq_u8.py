"""int8 -> uint8 (zero point 128) activation Q/DQ: weights stay int8, outputs are bit-identical."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from yolov9_qat.export.lint import lint
from yolov9_qat.export.ort_rewrite import count_qdq, to_u8

pytestmark = pytest.mark.cpu

LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "default": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,  # ORT's default level
}


def run(model: onnx.ModelProto, x: np.ndarray, level: ort.GraphOptimizationLevel) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = level
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


@pytest.fixture(scope="module")
def s8(qat_onnx) -> onnx.ModelProto:
    return onnx.load(str(qat_onnx))


@pytest.fixture(scope="module")
def u8(s8) -> onnx.ModelProto:
    return to_u8(s8)


def test_activations_become_uint8_weights_stay_int8(s8, u8) -> None:
    before, after = count_qdq(s8), count_qdq(u8)
    n_act, n_w = before["activation_q"]["int8"], before["weight_q"]["int8"]
    assert n_act > 100 and n_w > 100
    assert before["activation_zero_point"] == {"0": 2 * n_act}
    assert after == {
        "activation_q": {"uint8": n_act},
        "activation_dq": {"uint8": n_act},
        "weight_q": {"int8": n_w},
        "weight_dq": {"int8": n_w},
        "activation_zero_point": {"128": 2 * n_act},
        "weight_zero_point": {"0": 2 * n_w},
    }
    onnx.checker.check_model(u8, full_check=True)


def test_u8_graph_passes_lint(s8, u8) -> None:
    report = lint(u8)
    assert report.ok, report.format()
    before = lint(s8).stats
    assert report.stats["nodes"] < before["nodes"]  # the int8 zero-point Constants are gone
    assert {k: v for k, v in report.stats.items() if k != "nodes"} == {
        k: v for k, v in before.items() if k != "nodes"
    }


def test_scales_unchanged_and_input_untouched(qat_onnx, s8, u8) -> None:
    assert s8.SerializeToString() == onnx.load(str(qat_onnx)).SerializeToString()  # to_u8 copied it

    def scales(m: onnx.ModelProto) -> list[bytes]:
        consts = {n.output[0]: n.attribute[0].t for n in m.graph.node if n.op_type == "Constant"}
        consts.update({t.name: t for t in m.graph.initializer})
        return [
            numpy_helper.to_array(consts[n.input[1]]).tobytes()
            for n in m.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")
        ]

    assert scales(s8) == scales(u8)


@pytest.mark.parametrize("level", list(LEVELS))
def test_outputs_bit_exact(s8, u8, images, level: str) -> None:
    for x in (images[:1].numpy(), images[1:2].numpy(), (images[2:3].numpy() * 3 - 1)):  # last: saturates
        want = run(s8, x, LEVELS[level])
        got = run(u8, x, LEVELS[level])
        assert len(want) == len(got)
        for a, b in zip(want, got, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b), np.abs(a - b).max()


def test_writes_file_atomically(qat_onnx, tmp_path) -> None:
    out = tmp_path / "sub" / "u8.onnx"
    model = to_u8(qat_onnx, out)
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["u8.onnx"]
    assert onnx.load(str(out)).SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("level", list(LEVELS))
def test_shared_zero_point_and_saturation(tiny_model, level: str) -> None:
    """One zero-point initializer read by the weight's and the activations' Q/DQ: the weight keeps
    the int8 one, activations get a new uint8 one; inputs far outside the range saturate alike."""
    model = tiny_model(0.05, 0.05, "MaxPool", shared_zero_point=True)
    u8 = to_u8(model)
    onnx.checker.check_model(u8, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in u8.graph.initializer}
    assert inits["zp"].dtype == np.int8 and int(inits["zp"]) == 0
    nodes = {n.name: n for n in u8.graph.node}
    assert nodes["q_w"].input[2] == nodes["dq_w"].input[2] == "zp"
    act_zp = {nodes[k].input[2] for k in ("q_in", "dq_in", "q_out", "dq_out")}
    assert len(act_zp) == 1 and act_zp != {"zp"}
    new = inits[act_zp.pop()]
    assert new.dtype == np.uint8 and int(new) == 128
    assert count_qdq(u8)["weight_q"] == {"int8": 1}
    x = np.random.default_rng(1).normal(scale=5.0, size=(1, 4, 9, 9)).astype(np.float32)  # |x| >> 127 * 0.05
    (want,), (got,) = run(model, x, LEVELS[level]), run(u8, x, LEVELS[level])
    assert np.array_equal(want, got)
    assert lint(u8).ok and lint(model).ok


def test_count_qdq_reads_files(qat_onnx) -> None:
    counts = count_qdq(qat_onnx)
    assert set(counts["activation_q"]) == {"int8"} and set(counts["weight_q"]) == {"int8"}
