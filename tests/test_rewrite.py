"""decompose_model keeps everything but DeformConv, and refuses what it cannot do, clearly. No torch."""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_models import NodeCase, build

from deform_conv2d_onnx_exporter import DeformConvExportError, decompose_model

#: These tests rewrite ONNX models: their ``opset`` and ``lowering`` are not an exporter's.
pytestmark = pytest.mark.onnx_only

SYMBOLIC = NodeCase(symbolic_batch=True, symbolic_size=True)


def _with_neighbours(case: NodeCase = SYMBOLIC) -> onnx.ModelProto:
    """build(case) with a Relu before and after DeformConv, value_info and metadata."""
    model = build(case)
    graph = model.graph
    graph.node[0].input[0] = "x_relu"
    graph.node.insert(0, helper.make_node("Relu", ["x"], ["x_relu"], name="relu_in"))
    graph.node[1].output[0] = "y_raw"
    graph.node.append(helper.make_node("Relu", ["y_raw"], ["y"], name="relu_out"))
    graph.value_info.append(helper.make_tensor_value_info("x_relu", TensorProto.FLOAT, ["N", 4, "H", "W"]))
    weight = graph.initializer[0]
    graph.value_info.append(helper.make_tensor_value_info(weight.name, weight.data_type, list(weight.dims)))
    graph.node[0].metadata_props.add(key="source", value="model.py:11")
    graph.node[1].metadata_props.add(key="source", value="model.py:12")
    helper.set_model_props(model, {"author": "tests"})
    model.doc_string = "a model with one DeformConv"
    model.producer_name = "hand"
    return model


@pytest.mark.parametrize("opset", [None, 18], ids=["model's opset", "converted"])
def test_the_rest_of_the_model_is_kept(opset: Optional[int]) -> None:
    model = _with_neighbours()
    result = decompose_model(model, opset=opset)
    out = result.model
    assert result.rewritten == ["dcn"] and result.left_in_subgraphs == []
    assert not any(n.op_type == "DeformConv" for n in out.graph.node)
    names = [n.name for n in out.graph.node]
    assert names[0] == "relu_in" and names[-1] == "relu_out"
    assert all(name.startswith("dcn/") for name in names[1:-1])
    assert [(p.key, p.value) for p in out.graph.node[0].metadata_props] == [("source", "model.py:11")]
    assert all(
        ("source", "model.py:12") in [(p.key, p.value) for p in n.metadata_props]
        for n in out.graph.node[1:-1]
    )
    assert out.graph.input == model.graph.input and out.graph.output == model.graph.output
    # onnx.version_converter adds what its shape inference finds; nothing is lost either way
    kept = list(out.graph.value_info)
    assert all(info in kept for info in model.graph.value_info)
    assert opset is not None or kept == list(model.graph.value_info)
    # the weight and bias, read by DeformConv alone, are folded into the decomposition's constants
    assert not {t.name for t in model.graph.initializer} & {t.name for t in out.graph.initializer}
    assert not any(n.op_type in ("Reshape", "Transpose") and "W" in n.input for n in out.graph.node)
    assert out.metadata_props == model.metadata_props
    assert (out.doc_string, out.producer_name, out.ir_version) == (model.doc_string, "hand", 9)
    # symbolic dimensions stay symbolic
    assert [d.dim_param for d in out.graph.input[0].type.tensor_type.shape.dim] == ["N", "", "H", "W"]
    assert model.graph.node[1].op_type == "DeformConv", "the input model is not modified"


def test_an_initializer_read_elsewhere_is_kept() -> None:
    model = _with_neighbours()
    weight = model.graph.initializer[0].name
    model.graph.node.append(helper.make_node("Shape", [weight], ["w_shape"], name="weight_shape"))
    model.graph.output.append(helper.make_tensor_value_info("w_shape", TensorProto.INT64, [4]))
    out = decompose_model(model).model
    assert weight in {t.name for t in out.graph.initializer}


def test_the_output_value_keeps_its_name_and_consumers() -> None:
    out = decompose_model(_with_neighbours()).model
    producers = [n for n in out.graph.node if "y_raw" in n.output]
    assert len(producers) == 1 and producers[0].name.startswith("dcn/")
    assert out.graph.node[-1].input[0] == "y_raw"


def test_target_opset_is_converted() -> None:
    out = decompose_model(_with_neighbours(), opset=16, lowering="gathernd").model
    assert [(o.domain, o.version) for o in out.opset_import] == [("", 16)]
    onnx.checker.check_model(out, full_check=True)


def test_no_deformconv_is_refused() -> None:
    model = build(NodeCase())
    model.graph.node[0].op_type = "Conv"
    with pytest.raises(DeformConvExportError, match="no deformable convolution node"):
        decompose_model(model)


@pytest.mark.parametrize(
    ("opset", "lowering", "message"),
    [
        (11, "auto", "needs opset >= 12"),
        (15, "grid_sample", "'grid_sample' needs opset >= 16"),
        (18, "native", "'native' needs opset >= 19"),
        (19, "bilinear", "lowering: expected one of"),
    ],
)
def test_opset_and_lowering_errors(opset: int, lowering: str, message: str) -> None:
    with pytest.raises(DeformConvExportError, match=message):
        decompose_model(build(NodeCase()), opset, lowering)


def test_an_opset_the_converter_cannot_reach_is_refused() -> None:
    """onnx's version converter has no Relu adapter down to opset 12."""
    message = "cannot convert the model's other nodes from opset 19 to 12"
    with pytest.raises(DeformConvExportError, match=message):
        decompose_model(_with_neighbours(), opset=12)


def _edited(change: str) -> onnx.ModelProto:
    model = build(NodeCase())
    node = model.graph.node[0]
    if change == "attribute":
        node.attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))
    elif change in ("kernel_shape", "pads"):
        value = {"kernel_shape": [5, 5], "pads": [1, 1, 3, 1]}[change]
        (attribute,) = [a for a in node.attribute if a.name == change]
        attribute.CopyFrom(helper.make_attribute(change, value))
    elif change == "weight":
        del model.graph.initializer[0]
        model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, ["O", 4, 3, 3]))
    return model


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("attribute", "DeformConv node 'dcn': unsupported attribute auto_pad"),
        ("kernel_shape", r"kernel_shape=\[5, 5\] contradicts the weight's shape \(6, 4, 3, 3\)"),
        ("pads", "the offset's height is 7, but .* give an output size of 9"),
        ("weight", r"the weight 'W' needs a static shape .* got \(\?, 4, 3, 3\)"),
    ],
)
def test_node_errors_name_the_node_and_the_cause(change: str, message: str) -> None:
    with pytest.raises(DeformConvExportError, match=message):
        decompose_model(_edited(change))


def test_deformconv_in_a_subgraph_is_reported_not_rewritten() -> None:
    def branch(name: str) -> onnx.GraphProto:
        """DeformConv over the outer graph's tensors."""
        node = onnx.NodeProto()
        node.CopyFrom(build(NodeCase()).graph.node[0])
        node.output[0] = f"{name}_y"
        output = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, 6, 7, 9])
        return helper.make_graph([node], name, [], [output])

    model = _with_neighbours(NodeCase())
    model.graph.input.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
    model.graph.node.append(
        helper.make_node(
            "If", ["flag"], ["z"], name="choose", then_branch=branch("then"), else_branch=branch("else")
        )
    )
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 6, 7, 9]))
    result = decompose_model(model)
    assert result.rewritten == ["dcn"]
    assert [f.describe() for f in result.left_in_subgraphs] == [
        "DeformConv 'dcn' in If 'choose'.else_branch",
        "DeformConv 'dcn' in If 'choose'.then_branch",
    ]
    with pytest.raises(DeformConvExportError, match="inside a subgraph"):
        decompose_model(model, opset=16)


def test_names_never_collide() -> None:
    """An existing tensor called like a generated one does not confuse the rewrite."""
    model = _with_neighbours()
    model.graph.node[0].output[0] = "dcn/Reshape"
    model.graph.node[1].input[0] = "dcn/Reshape"
    out = decompose_model(model).model
    outputs = [o for n in out.graph.node for o in n.output]
    assert len(outputs) == len(set(outputs))
    assert np.unique([i.name for i in out.graph.initializer]).size == len(out.graph.initializer)
