"""Malformed deformable convolution nodes: decompose_model gives a correct model or a
DeformConvExportError naming what is wrong, never another exception. No torch.

A hypothesis strategy takes a correct one-node model in a drawn form and opset and breaks it in one
to three drawn ways: attribute values, types and lengths, missing, extra or swapped inputs and
outputs, input ranks, element types, opsets where the operator does not exist, and shapes that
contradict the attributes. Whatever decompose_model accepts must pass onnx's full check and run on
ONNX Runtime to the output of the same model rewritten with ONNX DeformConv (``native``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx_models import FORM_NAMES, NodeCase, build, fits, in_form, run_model

from deform_conv2d_onnx_exporter import DeformConvExportError, decompose_model
from deform_conv2d_onnx_exporter.__main__ import main
from deform_conv2d_onnx_exporter.lowering import DECOMPOSITIONS

pytestmark = pytest.mark.onnx_only

#: Element types a broken input may get.
_TYPES = [TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.BOOL, TensorProto.STRING]
#: A change to a model: it edits the model in place, drawing what it needs.
Breakage = Callable[[st.DrawFn, onnx.ModelProto], None]


def _node(model: onnx.ModelProto) -> onnx.NodeProto:
    return model.graph.node[0]


def _attribute_value(draw: st.DrawFn, model: onnx.ModelProto) -> None:
    """An attribute set to a drawn int, list of ints (any length), float or string."""
    node = _node(model)
    names = [a.name for a in node.attribute] + ["auto_pad", "bias", "strides", "stride", "pads", "group"]
    name = draw(st.sampled_from(names))
    value = draw(
        st.one_of(
            st.integers(-2, 6),
            st.lists(st.integers(-2, 6), max_size=5),
            st.floats(-2, 6, allow_nan=False),
            st.text("ab", min_size=1, max_size=3),
        )
    )
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if not (isinstance(value, list) and not value):  # onnx cannot tell an empty list's type
        node.attribute.append(helper.make_attribute(name, value))


def _drop_attribute(draw: st.DrawFn, model: onnx.ModelProto) -> None:
    node = _node(model)
    if node.attribute:
        del node.attribute[draw(st.integers(0, len(node.attribute) - 1))]


def _inputs(draw: st.DrawFn, model: onnx.ModelProto) -> None:
    """An input removed, emptied, added (any tensor of the model) or two swapped."""
    node = _node(model)
    names = list(node.input)
    tensors = [v.name for v in model.graph.input] + [t.name for t in model.graph.initializer]
    how = draw(st.sampled_from(["remove", "empty", "add", "swap"])) if names else "add"
    index = draw(st.integers(0, max(0, len(names) - 1)))
    if how == "remove":
        del names[index]
    elif how == "empty":
        names[index] = ""
    elif how == "add":
        names.append(draw(st.sampled_from(tensors)))
    else:
        other = draw(st.integers(0, len(names) - 1))
        names[index], names[other] = names[other], names[index]
    del node.input[:]
    node.input.extend(names)


def _outputs(draw: st.DrawFn, model: onnx.ModelProto) -> None:
    """An output added, emptied or removed."""
    node = _node(model)
    how = draw(st.sampled_from(["add", "empty", "remove"]))
    if how == "add":
        node.output.append("y_extra")
    elif how == "empty" and node.output:
        node.output[0] = ""
    else:
        del node.output[:]


def _graph_input(draw: st.DrawFn, model: onnx.ModelProto) -> None:
    """A graph input of another rank, element type or size in one dimension."""
    value = draw(st.sampled_from(list(model.graph.input)))
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
    how = draw(st.sampled_from(["rank", "type", "size"]))
    if how == "rank":
        dims = dims[: draw(st.integers(0, 3))] if draw(st.booleans()) else [*dims, 2]
    elif how == "type":
        tensor.elem_type = draw(st.sampled_from(_TYPES))
    elif dims:
        dims[draw(st.integers(0, len(dims) - 1))] = draw(st.integers(0, 40))
    value.CopyFrom(helper.make_tensor_value_info(value.name, tensor.elem_type, dims))


def _weight(draw: st.DrawFn, model: onnx.ModelProto) -> None:
    """The weight (or bias) of another shape or element type."""
    tensor = draw(st.sampled_from(list(model.graph.initializer)))
    array = numpy_helper.to_array(tensor)
    if draw(st.booleans()):
        shape = draw(st.lists(st.integers(1, 7), min_size=1, max_size=5))
        array = np.ones(shape, array.dtype)
    else:
        array = array.astype(draw(st.sampled_from([np.float16, np.float64, np.int64])))
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def _opset(draw: st.DrawFn, model: onnx.ModelProto) -> None:
    """The default opset changed (DeformConv exists from 19), or a custom domain's import removed."""
    imports = list(model.opset_import)
    del model.opset_import[:]
    if draw(st.booleans()):
        model.opset_import.extend(e for e in imports if e.domain == "")
    else:
        version = draw(st.integers(7, onnx.defs.onnx_opset_version()))
        model.opset_import.extend(
            helper.make_opsetid(e.domain, version) if e.domain == "" else e for e in imports
        )


BREAKAGES: list[Breakage] = [
    _attribute_value,
    _drop_attribute,
    _inputs,
    _outputs,
    _graph_input,
    _weight,
    _opset,
]


@st.composite
def malformed_models(draw: st.DrawFn) -> onnx.ModelProto:
    """A correct one-node model in a drawn form, broken in one to three drawn ways."""
    form = draw(st.sampled_from(FORM_NAMES))
    mask, bias, padding = fits(form, draw(st.booleans()), draw(st.booleans()), (1, 1))
    # static sizes only: a symbolic size that contradicts the attributes is the caller's input
    # error, found at run time, not the model's
    case = NodeCase(mask=mask, bias=bias)
    model = build(case.with_(pads=(*padding, *padding)), opset=draw(st.sampled_from([19, 22])))
    if form != "DeformConv":
        model = in_form(model, form, draw(st.sampled_from([11, 17, 19])))
    for breakage in draw(st.lists(st.sampled_from(BREAKAGES), min_size=1, max_size=3)):
        breakage(draw, model)
    return model


def _run(model: onnx.ModelProto, seed: int = 0) -> list[np.ndarray]:
    """The model on ONNX Runtime (run_model), every input random (symbolic dimensions, which a
    broken input may have, of size 7)."""
    rng = np.random.default_rng(seed)
    initializers = {tensor.name for tensor in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 7 for d in tensor_type.shape.dim]
        dtype = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}.get(
            tensor_type.elem_type, np.float16
        )
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return run_model(model, feeds)


@settings(max_examples=5 * settings.default.max_examples)  # 300 in CI, 2,500 in ``nox -s fuzz``
@given(model=malformed_models(), lowering=st.sampled_from(["auto", *DECOMPOSITIONS]))
def test_a_malformed_node_is_refused_or_rewritten_correctly(model: onnx.ModelProto, lowering: str) -> None:
    try:
        result = decompose_model(model, lowering=lowering).model
    except DeformConvExportError as error:
        message = str(error)
        assert "\n" not in message and message, message
        return
    onnx.checker.check_model(result, full_check=True)
    native = decompose_model(model, lowering="native").model
    for got, want in zip(_run(result), _run(native)):
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)


@settings(max_examples=settings.default.max_examples)
@given(model=malformed_models())
def test_info_describes_a_malformed_node_or_refuses_in_one_line(model: onnx.ModelProto) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        onnx.save(model, path)
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            status = main(["info", path])
    assert status == 0 or (status == 1 and err.getvalue().count("\n") == 1), err.getvalue()


def _strides(value: Any) -> Callable[[onnx.ModelProto], None]:
    def change(model: onnx.ModelProto) -> None:
        node = _node(model)
        (attribute,) = [a for a in node.attribute if a.name == "strides"]
        attribute.CopyFrom(helper.make_attribute("strides", value))

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _strides([0, 1]),
            r"DeformConv node 'dcn': strides: expected 2 values \(h, w\), each >= 1, got \[0, 1\]",
        ),
        (_strides([1, 1, 1]), r"strides: expected 2 values \(h, w\), each >= 1, got \[1, 1, 1\]"),
        (_strides(1.5), "strides: expected ints, got float 1.5"),
    ],
)
def test_cli_refuses_in_one_line_without_output(
    change: Callable[[onnx.ModelProto], None],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = build(NodeCase())
    change(model)
    source, output = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    assert main(["decompose", str(source), str(output)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not output.exists()
