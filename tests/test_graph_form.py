"""The form of every exported graph: what the tools after export (simplifiers, fp16 converters,
quantizers, shape inference, 4-D-only runtimes) need, checked on every path and lowering.

The numbers are checked elsewhere (test_sweep.py, test_properties.py, the toolchain session); here
each graph is checked for: every tensor at rank <= 4; no Range and no Reshape to a scalar; no
integer-to-float Cast (fp16 converters retype its output but not its ``to``); no MatMul operand
computed from shapes alone (quantizers calibrate it as a weight); ONNX Runtime's symbolic shape
inference (used by its TensorRT provider and its quantization pre-processing) accepts it.
"""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto
from onnx_models import NodeCase, build
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
from support import Case, DeformConvCall, export, input_names, make_inputs

from deform_conv2d_onnx_exporter import decompose_model
from deform_conv2d_onnx_exporter.lowering import DECOMPOSITIONS

#: Offset groups and groups both above 1, a static batch above 1: the cases that broke before.
CASE = Case(in_channels=8, out_channels=4, groups=2, offset_groups=2, batch=2)
NODE_CASE = NodeCase(in_channels=8, out_channels=4, group=2, offset_group=2, batch=2)
_INTEGER_TYPES = {TensorProto.INT64, TensorProto.INT32}
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16}


def _cases(opsets: tuple[int | None, ...]) -> list[tuple[str, bool, int | None]]:
    """(lowering, dynamic sizes, opset) for every decomposition at every opset it can be written in."""
    return [
        (lowering, dynamic, opset)
        for lowering in ["auto", *DECOMPOSITIONS]
        for dynamic in (False, True)
        for opset in opsets
        if not (lowering.startswith("grid_sample") and opset is not None and opset < 16)
    ]


#: The legacy exporter below and from GridSample's opset; the dynamo exporter at its default opset.
_EXPORTS = [("legacy", *case) for case in _cases((13, 17))] + [("dynamo", *case) for case in _cases((None,))]


@pytest.mark.parametrize(("exporter", "lowering", "dynamic", "opset"), _EXPORTS)
def test_exported_graph_form(exporter: str, lowering: str, dynamic: bool, opset: int | None) -> None:
    data = export(
        DeformConvCall(CASE),
        make_inputs(CASE),
        exporter,
        lowering,
        input_names(CASE),
        dynamic=dynamic,
        opset=opset,
    )
    _check_form(onnx.load_from_string(data))
    if lowering == "grid_sample_ncnn":
        _check_batch_first_without_comparisons(onnx.load_from_string(data), None if dynamic else CASE.batch)


@pytest.mark.onnx_only
@pytest.mark.parametrize(("lowering", "dynamic", "opset"), _cases((13, 17, 19)))
def test_rewritten_graph_form(lowering: str, dynamic: bool, opset: int) -> None:
    model = build(NODE_CASE.with_(symbolic_batch=dynamic, symbolic_size=dynamic))
    rewritten = decompose_model(model, opset=opset, lowering=lowering).model
    _check_form(rewritten)
    if lowering == "grid_sample_ncnn":
        _check_batch_first_without_comparisons(rewritten, None if dynamic else NODE_CASE.batch)


#: What ncnn has no layer for: the grid_sample_ncnn lowering writes none of these.
_COMPARISONS = {"Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "Where", "And", "Or", "Not"}


def _check_batch_first_without_comparisons(model: onnx.ModelProto, batch: int | None) -> None:
    """grid_sample_ncnn: no comparison, and GridSample's image and grid hold the batch on their
    first axis (ncnn has no batch, and would read a first axis of B*og as channels)."""
    assert not {node.op_type for node in model.graph.node} & _COMPARISONS
    if batch is None:
        return
    shapes = {
        info.name: [d.dim_value for d in info.type.tensor_type.shape.dim]
        for info in onnx.shape_inference.infer_shapes(model).graph.value_info
    }
    samplers = [node for node in model.graph.node if node.op_type == "GridSample"]
    assert len(samplers) == NODE_CASE.offset_group
    assert all(shapes[node.input[i]][0] == batch for node in samplers for i in (0, 1))


def _check_form(model: onnx.ModelProto) -> None:
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    types = _tensor_types(inferred)
    problems = [
        f"{name} has rank {rank}" for name, (_, rank) in types.items() if rank is not None and rank > 4
    ]
    for node in model.graph.node:
        if node.op_type == "Range":
            problems.append(f"{node.name}: Range")
        if node.op_type == "Reshape" and _constant_shape(model, node.input[1]) == []:
            problems.append(f"{node.name}: Reshape to a scalar")
        if node.op_type == "Cast" and types.get(node.input[0], (None, None))[0] in _INTEGER_TYPES:
            to = next(a.i for a in node.attribute if a.name == "to")
            if to in _FLOAT_TYPES:
                problems.append(f"{node.name}: integer-to-float Cast")
    problems += [
        f"{name}: MatMul operand computed from shapes" for name in _shape_derived_matmul_operands(model)
    ]
    assert problems == []
    SymbolicShapeInference.infer_shapes(model, auto_merge=True)


def _tensor_types(model: onnx.ModelProto) -> dict[str, tuple[int, int | None]]:
    """Element type and rank of every tensor shape inference could type."""
    types: dict[str, tuple[int, int | None]] = {}
    graph = model.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        types[info.name] = (tensor.elem_type, len(tensor.shape.dim) if tensor.HasField("shape") else None)
    for initializer in graph.initializer:
        types[initializer.name] = (initializer.data_type, len(initializer.dims))
    return types


def _constant_shape(model: onnx.ModelProto, name: str) -> list[int] | None:
    """The values of a constant 1-D shape tensor, None when it is computed."""
    for initializer in model.graph.initializer:
        if initializer.name == name:
            return [int(v) for v in onnx.numpy_helper.to_array(initializer)]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return [int(v) for v in onnx.numpy_helper.to_array(node.attribute[0].t).reshape(-1)]
    return None


def _shape_derived_matmul_operands(model: onnx.ModelProto) -> list[str]:
    """MatMul operands whose value depends on shapes and constants only, never on input data."""
    producers = {out: node for node in model.graph.node for out in node.output}
    data = {i.name for i in model.graph.input}
    constants = {i.name for i in model.graph.initializer}
    memo: dict[str, tuple[bool, bool]] = {}

    def facts(name: str) -> tuple[bool, bool]:
        """(depends on input data, depends on a Shape)."""
        if name in data:
            return True, False
        if name in constants or name not in producers:
            return False, False
        if name not in memo:
            node = producers[name]
            if node.op_type == "Shape":
                memo[name] = (False, True)
            else:
                found = [facts(i) for i in node.input if i]
                memo[name] = (any(d for d, _ in found), any(s for _, s in found))
        return memo[name]

    return [
        operand
        for node in model.graph.node
        if node.op_type == "MatMul"
        for operand in node.input
        if facts(operand) == (False, True)
    ]


@pytest.mark.parametrize("lowering", DECOMPOSITIONS)
@pytest.mark.parametrize(
    "case",
    [
        NodeCase(),
        NodeCase(symbolic_batch=True),
        NodeCase(symbolic_size=True),
        NodeCase(symbolic_batch=True, symbolic_size=True),
    ],
    ids=str,
)
def test_every_node_is_read(case: NodeCase, lowering: str) -> None:
    """No node whose outputs nothing reads: a size computed for a decision and then dropped."""
    model = decompose_model(build(case), lowering=lowering).model
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    unread = [node.name for node in model.graph.node if not any(name in read for name in node.output)]
    assert not unread, f"nodes nothing reads: {unread}"
