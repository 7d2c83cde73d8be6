"""DeformConv's ONNX semantics against torchvision's kernel, and rewritten models against both.

Checks (a) that ONNX DeformConv (reference evaluator and ONNX Runtime >= 1.25) computes what
torchvision computes, offset layout (offset_group, kh, kw, [dy, dx]) and asymmetric pads included,
which is what test_runtimes.py relies on; (b) that rewritten models agree with torchvision on ONNX
Runtime; (c) the same for a model the dynamo exporter wrote with native DeformConv.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
import torchvision
from onnx import numpy_helper
from onnx_models import CASES, NodeCase, build, feeds, onnxruntime_max_opset, reference_output
from support import ORT_HAS_DEFORMCONV, Case, DeformConvCall, input_names, make_inputs

from deform_conv2d_onnx_exporter import decompose_model
from deform_conv2d_onnx_exporter.lowering import DECOMPOSITIONS

#: These tests rewrite ONNX models: their ``opset`` and ``lowering`` are not an exporter's.
pytestmark = pytest.mark.onnx_only


def torchvision_output(case: NodeCase, model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """torchvision's deform_conv2d on the model's weights and inputs.

    torchvision pads symmetrically, by the begin pads here. An end pad larger than the begin pad
    is the same as zero rows/columns appended to the input (samples there read zeros either
    way); a smaller one only drops output rows/columns, so offset and mask are padded to
    torchvision's output size and the result is cropped back.
    """
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
    x = torch.from_numpy(inputs["x"])
    begin_h, begin_w, end_h, end_w = case.pads
    x = F.pad(x, (0, max(0, end_w - begin_w), 0, max(0, end_h - begin_h)))
    symmetric = case.with_(pads=(begin_h, begin_w, begin_h, begin_w), height=x.shape[2], width=x.shape[3])
    oh, ow = case.with_(height=inputs["x"].shape[2], width=inputs["x"].shape[3]).out_size
    grow = (0, symmetric.out_size[1] - ow, 0, symmetric.out_size[0] - oh)
    offset = F.pad(torch.from_numpy(inputs["offset"]), grow)
    mask = F.pad(torch.from_numpy(inputs["mask"]), grow) if case.mask else None
    out = torchvision.ops.deform_conv2d(
        x,
        offset,
        weights["W"],
        weights.get("B"),
        stride=case.strides,
        padding=(begin_h, begin_w),
        dilation=case.dilations,
        mask=mask,
    )
    return out[:, :, :oh, :ow].numpy()


def _tolerance(case: NodeCase, exact_in_float64: bool = True) -> dict[str, float]:
    limit = 1e-10 if case.dtype == np.float64 and exact_in_float64 else 1e-4
    return {"atol": limit, "rtol": limit}


def _ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_onnx_deformconv_is_torchvisions(case: NodeCase) -> None:
    """Same layout and pads: the reference evaluator and ORT's native kernel match torchvision."""
    model, inputs = build(case), feeds(case)
    want = torchvision_output(case, model, inputs)
    # The reference evaluator's DeformConv rounds through float32 even for float64 (2e-6 measured).
    np.testing.assert_allclose(reference_output(model, inputs), want, **_tolerance(case, False))
    if ORT_HAS_DEFORMCONV:
        np.testing.assert_allclose(_ort(model, inputs), want, **_tolerance(case))


@pytest.mark.parametrize(
    ("case", "lowering"),
    [
        pytest.param(case, lowering, id=f"{case}-{lowering}")
        for case in CASES
        for lowering in ["auto", *DECOMPOSITIONS]
        # GridSample's coordinate round trip is float32-exact only (README, Precision).
        if not (case.dtype == np.float64 and lowering.startswith("grid_sample"))
    ],
)
def test_rewritten_model_matches_torchvision(case: NodeCase, lowering: str) -> None:
    model = build(case)
    rewritten = decompose_model(model, min(20, onnxruntime_max_opset()), lowering).model
    for batch, size in [(None, None), (2, (10, 5))] if case.symbolic else [(None, None)]:
        inputs = feeds(case, batch=batch, size=size)
        want = torchvision_output(case, model, inputs)
        np.testing.assert_allclose(_ort(rewritten, inputs), want, **_tolerance(case))
        if ORT_HAS_DEFORMCONV:
            np.testing.assert_allclose(_ort(rewritten, inputs), _ort(model, inputs), **_tolerance(case))


def _dynamo_export_with_native_deformconv(
    module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str]
) -> onnx.ModelProto:
    """torch's own dynamo export: DeformConv written natively (onnxscript >= 0.7.1), opset 19."""
    batch = torch.export.Dim("batch")
    dims = {0: batch, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    program = torch.onnx.export(
        module,
        inputs,
        dynamo=True,
        opset_version=19,
        input_names=names,
        dynamic_shapes=[dims] * len(inputs),
        verbose=False,
    )
    return program.model_proto


@pytest.mark.torch_writes_deformconv
@pytest.mark.parametrize("lowering", ["auto", "gather_rows", "gathernd"])
def test_dynamo_exported_model(lowering: str) -> None:
    """A real exporter's DeformConv model, with symbolic batch, height and width."""
    case = Case(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, offset_groups=2)
    module = DeformConvCall(case)
    names = input_names(case)
    model = _dynamo_export_with_native_deformconv(module, make_inputs(case), names)
    assert [n.op_type for n in model.graph.node].count("DeformConv") == 1
    rewritten = decompose_model(model, lowering=lowering).model
    assert "DeformConv" not in [n.op_type for n in rewritten.graph.node]
    for batch, size in [(1, (7, 9)), (3, (12, 5))]:
        inputs = make_inputs(case, batch=batch, size=size)
        feeds_ = {n: t.numpy() for n, t in zip(names, inputs)}
        want = module(*inputs).detach().numpy()
        np.testing.assert_allclose(_ort(rewritten, feeds_), want, atol=1e-4, rtol=1e-4)
        if ORT_HAS_DEFORMCONV:
            np.testing.assert_allclose(_ort(rewritten, feeds_), _ort(model, feeds_), atol=1e-4, rtol=1e-4)
