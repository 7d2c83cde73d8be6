"""dtypes, dynamic sizes, opsets and a real DCNv2 model, each against torchvision's kernel."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from support import (
    EXPORTERS,
    FLOAT64_GRID_SAMPLE_OPSET,
    LOWERINGS,
    TORCH,
    Case,
    DeformConvCall,
    assert_matches,
    export,
    input_names,
    make_inputs,
    missing_path,
    run,
)

from deform_conv2d_onnx_exporter import DeformConvExportError, demo

DTYPE_CASES = [Case(), Case(offset_groups=2, groups=2, mask=False, stride=(2, 1))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", DTYPE_CASES, ids=str)
def test_dtype(case: Case, exporter: str, lowering: str, dtype: torch.dtype) -> None:
    module = DeformConvCall(case, dtype)
    names = input_names(case)
    inputs = make_inputs(case, dtype)
    if dtype == torch.float16 and not TORCH.cpu_float16_matmul:
        with pytest.raises(DeformConvExportError, match=rf"float16: .*torch {TORCH.version} does not have"):
            export(module, inputs, exporter, lowering, names)
        return
    # ONNX Runtime has float64 GridSample from opset 20 (the auto lowering avoids it below)
    opset = (
        FLOAT64_GRID_SAMPLE_OPSET if dtype == torch.float64 and lowering.startswith("grid_sample") else None
    )
    model = export(module, inputs, exporter, lowering, names, opset=opset)
    assert_matches(run(model, names, inputs), module(*inputs), dtype)


def test_float16_is_sampled_in_float32() -> None:
    """The fp16 model equals torchvision's fp32 result on the same fp16 values, rounded once."""
    case = Case(height=40, width=1000, offset_groups=2)
    module = DeformConvCall(case, torch.float16)
    inputs = make_inputs(case, torch.float16)
    if not TORCH.cpu_float16_matmul:
        with pytest.raises(DeformConvExportError, match="float16: "):
            export(module, inputs, "legacy", "gather_rows", names=input_names(case))
        return
    model = export(module, inputs, "legacy", "gather_rows", names=input_names(case))
    got = run(model, input_names(case), inputs)
    exact = copy.deepcopy(module).float()(*(t.float() for t in inputs)).detach()
    np.testing.assert_allclose(got, exact.half().numpy(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_dynamic_sizes(exporter: str, lowering: str) -> None:
    """Exported at 7×9, batch 1; run at other sizes and batches, including larger ones."""
    case = Case(stride=(2, 1), dilation=(1, 2), padding=(1, 2), offset_groups=2)
    module = DeformConvCall(case)
    names = input_names(case)
    model = export(module, make_inputs(case), exporter, lowering, names, dynamic=True)
    graph = onnx.load_from_string(model).graph
    x_dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(x_dims[2], str) and isinstance(x_dims[3], str), x_dims
    for batch, size in [(2, (12, 5)), (1, (31, 40)), (4, (3, 3))]:
        inputs = make_inputs(case, batch=batch, size=size, seed=batch)
        assert_matches(run(model, names, inputs), module(*inputs), torch.float32)


class UpsampledDCN(torch.nn.Module):
    """Offsets and mask predicted after an interpolate: sizes the legacy exporter cannot tell."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.nn.Conv2d(4, 27, 3, padding=1)
        self.dcn = DeformConvCall(Case(in_channels=4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        predicted = self.offset(x)
        return self.dcn(x, predicted[:, :18] * 3, torch.sigmoid(predicted[:, 18:]))


@pytest.mark.symbolic_sizes
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_sizes_only_known_at_run_time(exporter: str) -> None:
    torch.manual_seed(0)
    module = UpsampledDCN().eval()
    model = export(module, (torch.randn(1, 4, 6, 7),), exporter, names=["x"], dynamic=True)
    for shape in [(1, 4, 6, 7), (2, 4, 9, 5)]:
        x = torch.randn(shape)
        assert_matches(run(model, ["x"], (x,)), module(x), torch.float32)


@pytest.mark.parametrize("opset", [12, 13, 15, 16, 17, 18, 19, 20])
def test_legacy_opsets_auto(opset: int) -> None:
    """auto: gather_rows at every opset (integer positions: safe in half precision)."""
    case = Case(offset_groups=2, stride=(1, 2))
    module = DeformConvCall(case)
    names, inputs = input_names(case), make_inputs(case)
    model = onnx.load_from_string(export(module, inputs, "legacy", "auto", names, opset=opset))
    assert model.opset_import[0].version == opset
    ops = {node.op_type for node in model.graph.node}
    assert "Gather" in ops and not ops & {"GridSample", "DeformConv"}
    assert_matches(run(model.SerializeToString(), names, inputs), module(*inputs), torch.float32)


@pytest.mark.refusal
@pytest.mark.parametrize(("lowering", "opset"), [("grid_sample", 15), ("native", 18)])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_lowering_below_its_opset_is_refused(exporter: str, lowering: str, opset: int) -> None:
    case = Case()
    message = rf"lowering: '{lowering}' needs opset >= \d+, got opset {opset}"
    if missing_path(exporter, lowering, on_onnxruntime=False):  # not even at a higher opset
        message = rf"lowering: '{lowering}' needs opset >= \d+, and the legacy exporter of torch"
    with pytest.raises(Exception, match=message):
        export(DeformConvCall(case), make_inputs(case), exporter, lowering, opset=opset)


@pytest.mark.dynamo
@pytest.mark.parametrize(
    ("opset", "lowering", "expected_op"),
    [
        (18, "auto", "Gather"),
        (None, "auto", "Gather"),
        (22, "auto", "Gather"),
        (22, "grid_sample", "GridSample"),
        (18, "gather_rows", "Gather"),
        (19, "native", "DeformConv"),
        (22, "native", "DeformConv"),
    ],
)
def test_dynamo_opsets(opset: int | None, lowering: str, expected_op: str) -> None:
    case = Case(groups=2, offset_groups=2, mask=False)
    module = DeformConvCall(case)
    names, inputs = input_names(case), make_inputs(case)
    model = onnx.load_from_string(export(module, inputs, "dynamo", lowering, names, opset=opset))
    if opset is not None:
        assert {o.domain: o.version for o in model.opset_import}[""] == opset
    ops = {node.op_type for node in model.graph.node}
    assert expected_op in ops and (expected_op == "DeformConv") == ("DeformConv" in ops)
    assert_matches(run(model.SerializeToString(), names, inputs), module(*inputs), torch.float32)


@pytest.mark.parametrize("lowering", ["auto", "gather_rows", "gathernd", "gatherelements"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_dcnv2_backbone(exporter: str, lowering: str) -> None:
    """The demo's backbone (3 DCNv2 stages, groups and offset groups, 5×5, stride 2), end to end."""
    model_module = demo.build_demo_model()
    x = torch.randn(2, 3, 40, 48)
    model = export(model_module, (x,), exporter, lowering, ["image"], dynamic=True)
    for shape in [(2, 3, 40, 48), (1, 3, 57, 33)]:
        x = torch.randn(shape)
        with torch.no_grad():
            assert_matches(run(model, ["image"], (x,)), model_module(x), torch.float32)


@pytest.mark.parametrize("width", [256, 1000])
def test_wide_images_float32(width: int) -> None:
    """gather_rows keeps every absolute position in integers, so at any width it matches exact
    (float64) arithmetic more closely than torchvision's own float32 kernel, whose positions are
    floats. grid_sample passes coordinates through GridSample's normalised frame, which costs a few
    ulps of the width: its error against exact arithmetic stays within 3x torchvision's own."""
    case = Case(in_channels=16, out_channels=16, height=24, width=width, offset_groups=2)
    module, names, inputs = DeformConvCall(case), input_names(case), make_inputs(case)
    expected = module(*inputs).detach()
    exact = copy.deepcopy(module).double()(*(t.double() for t in inputs)).detach().numpy()
    torchvision_error = float(np.abs(expected.numpy() - exact).max())

    rows = run(export(module, inputs, "legacy", "gather_rows", names), names, inputs)
    assert float(np.abs(rows - exact).max()) <= torchvision_error
    grid = run(export(module, inputs, "legacy", "grid_sample", names), names, inputs)
    assert float(np.abs(grid - exact).max()) <= 3 * torchvision_error


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize(
    "case",
    [
        Case(in_channels=8, out_channels=4, height=112, width=112, groups=2, offset_groups=2, batch=2),
        Case(in_channels=8, out_channels=4, height=111, width=117, stride=(1, 2), mask=False, batch=2),
    ],
    ids=str,
)
def test_grid_sample_in_slices_of_positions(exporter: str, case: Case) -> None:
    """With static sizes, grid_sample computes a large problem a slice of output positions at a time
    (uneven slices in the second case): the same numbers as in one piece (dynamic sizes), whose error
    at this width is GridSample's coordinate round trip (test_wide_images_float32)."""
    module, names, inputs = DeformConvCall(case), input_names(case), make_inputs(case)
    sliced = export(module, inputs, exporter, "grid_sample", names)
    whole = export(module, inputs, exporter, "grid_sample", names, dynamic=True)
    sliced_ops = [node.op_type for node in onnx.load_from_string(sliced).graph.node]
    whole_ops = [node.op_type for node in onnx.load_from_string(whole).graph.node]
    assert sliced_ops.count("GridSample") > 1, "the case is too small to be sliced"
    assert whole_ops.count("GridSample") == 1
    got = run(sliced, names, inputs)
    np.testing.assert_array_equal(got, run(whole, names, inputs))
    exact = copy.deepcopy(module).double()(*(t.double() for t in inputs)).detach().numpy()
    torchvision_error = float(np.abs(module(*inputs).detach().numpy() - exact).max())
    assert float(np.abs(got - exact).max()) <= 3 * torchvision_error
