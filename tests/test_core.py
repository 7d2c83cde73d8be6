"""The core against a minimal emitter: what it refuses before writing any graph."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pytest
from onnx import TensorProto

from deform_conv2d_onnx_exporter.decomposition import emit_call
from deform_conv2d_onnx_exporter.emitter import Attribute, Emitter
from deform_conv2d_onnx_exporter.lowering import DECOMPOSITIONS, LoweringOptions
from deform_conv2d_onnx_exporter.params import DeformConvExportError
from deform_conv2d_onnx_exporter.schema import DeformConv2dCall


class Value:
    """A graph value that only knows its shape and element type."""

    def __init__(self, shape: Optional[Sequence[Optional[int]]], elem_type: Optional[int]) -> None:
        self.shape = shape
        self.elem_type = elem_type


class CountingEmitter(Emitter[Value]):
    """Emits nothing; counts the nodes it was asked for."""

    path = "counting"

    def __init__(self, opset: int = 17) -> None:
        super().__init__(opset)
        self.nodes: list[str] = []

    def _node(
        self, op_type: str, inputs: Sequence[Value], attributes: dict[str, Attribute], name: str
    ) -> Value:
        self.nodes.append(op_type)
        return Value(None, inputs[0].elem_type if inputs else None)

    def _constant(self, array: np.ndarray) -> Value:
        return Value(array.shape, TensorProto.FLOAT)

    def static_shape(self, value: Value) -> Optional[Sequence[Optional[int]]]:
        return value.shape

    def elem_type(self, value: Value) -> Optional[int]:
        return value.elem_type


def _call(input_type: Optional[int], lowering: str = "auto") -> CountingEmitter:
    e = CountingEmitter()
    call = DeformConv2dCall.bind(
        Value((1, 4, 5, 5), input_type),
        Value((2, 4, 3, 3), TensorProto.FLOAT),
        Value((1, 18, 5, 5), TensorProto.FLOAT),
        Value((1, 9, 5, 5), TensorProto.FLOAT),
        Value((2,), TensorProto.FLOAT),
        1,
        1,
        1,
        1,
        1,
        1,
        1,
        1,
        True,
    )
    emit_call(e, LoweringOptions(lowering), call)  # type: ignore[arg-type]
    return e


@pytest.mark.parametrize(
    ("elem_type", "name"),
    [
        (TensorProto.INT64, "int64"),
        (TensorProto.INT32, "int32"),
        (TensorProto.BOOL, "bool"),
        (TensorProto.UINT8, "uint8"),
    ],
)
def test_integer_and_bool_inputs_are_refused(elem_type: int, name: str) -> None:
    with pytest.raises(DeformConvExportError, match=rf"input: expected a floating-point tensor .*got {name}"):
        _call(elem_type)


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(DeformConvExportError, match="input: the element type must be known"):
        _call(None)


@pytest.mark.parametrize("lowering", DECOMPOSITIONS)
def test_float_inputs_are_emitted(lowering: str) -> None:
    nodes = _call(TensorProto.FLOAT, lowering).nodes
    assert "MatMul" in nodes and "DeformConv" not in nodes
