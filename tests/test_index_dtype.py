"""The gather lowerings' integer positions: int32, and int64 where static sizes give more rows than
int32 addresses.

Inputs of 2^31 rows do not fit a test, so the limit is lowered (``INT32_ROWS``, monkeypatched) to
a few dozen rows: the same graph decision, at sizes that run in milliseconds.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx_models import NodeCase, build, expected, feeds, onnxruntime_max_opset, run_model, tolerance

from deform_conv2d_onnx_exporter import decompose_model, decomposition

GATHERS = ["gather_rows", "gathernd", "gatherelements"]
#: The limit the tests lower INT32_ROWS to: NodeCase()'s 7x9 input pads to 10x12 = 120 rows.
SMALL_LIMIT = 50


def decomposed(case: NodeCase, lowering: str) -> onnx.ModelProto:
    """The case rewritten at an opset the installed ONNX Runtime runs (1.15 stops at 18)."""
    return decompose_model(build(case), lowering=lowering, opset=min(19, onnxruntime_max_opset())).model


def per_sample_int64(model: onnx.ModelProto) -> list[str]:
    """int64 values of more than 8 elements (not sizes or shapes), other than GatherND's indices."""
    inferred = onnx.shape_inference.infer_shapes(model)
    gathernd_indices = {n.input[1] for n in model.graph.node if n.op_type == "GatherND"}
    found = []
    for info in inferred.graph.value_info:
        tensor = info.type.tensor_type
        dims = [d.dim_value for d in tensor.shape.dim]
        if (
            tensor.elem_type == onnx.TensorProto.INT64
            and np.prod(dims) > 8
            and info.name not in gathernd_indices
        ):
            found.append(info.name)
    return found


@pytest.mark.parametrize("lowering", GATHERS)
@pytest.mark.parametrize("case", [NodeCase(), NodeCase(batch=2, offset_group=2, group=2)], ids=str)
def test_positions_are_int32(case: NodeCase, lowering: str) -> None:
    model = decomposed(case, lowering)
    assert not per_sample_int64(model)
    np.testing.assert_allclose(run_model(model, feeds(case))[0], expected(case), **tolerance(case))


@pytest.mark.parametrize("lowering", GATHERS)
def test_int64_where_static_sizes_outgrow_int32(lowering: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decomposition, "INT32_ROWS", SMALL_LIMIT)
    case = NodeCase()
    model = decomposed(case, lowering)
    assert per_sample_int64(model), "expected int64 indices past the limit"
    np.testing.assert_allclose(run_model(model, feeds(case))[0], expected(case), **tolerance(case))
