"""Every entry point's default export, and every half-safe lowering, within 2x the half-precision floor.

The pipelines, the model and the floor are in half_precision.py. Collected only with
``--precision`` (``nox -s precision``): the pipelines need OpenVINO and onnxconverter-common, and
the 1024x1024 images take a few minutes.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from half_precision import BOUND, PIPELINES, SIZES, Pipeline, build_model, make_input, reference

import deform_conv2d_onnx_exporter as dce

#: The public ways to get the default decomposition, and the same from a model with symbolic sizes.
ENTRY_POINTS = [
    "export",
    "register_deform_conv2d_onnx_op",
    "create_deform_conv2d_custom_op",
    "decompose_model",
    "decompose_model, symbolic sizes",
]
#: The other lowerings whose positions are integers (gather_rows is the default): safe in half
#: precision (README, "Precision"). Their coordinates are the default's; the sizes where positions
#: are largest suffice.
HALF_SAFE = ["gathernd", "gatherelements"]
LARGE_SIZES = ["1024", "32x2048"]
#: The lowerings that pass positions through floats: README gives their error instead.
NOT_HALF_SAFE = ["grid_sample", "grid_sample_ncnn"]


def _torch_export(model: torch.nn.Module, x: torch.Tensor, **kwargs: object) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, input_names=["x"], **kwargs)
    return onnx.load_from_string(buffer.getvalue())


@functools.cache
def _native(size: str, symbolic: bool) -> onnx.ModelProto:
    """The model with ONNX DeformConv, as decompose_model's users have it."""
    model, x = build_model(), torch.from_numpy(make_input(size))
    if not symbolic:
        return _torch_export(model, x, dynamo=True, opset_version=19)
    height, width = torch.export.Dim("height", min=8), torch.export.Dim("width", min=8)
    return _torch_export(model, x, dynamo=True, opset_version=19, dynamic_shapes=({2: height, 3: width},))


@functools.cache
def default_export(entry: str, size: str) -> onnx.ModelProto:
    """The precision model written by ``entry`` with every argument at its default, static sizes
    (symbolic ones for the last entry point)."""
    model, x = build_model(), torch.from_numpy(make_input(size))
    if entry == "export":
        buffer = io.BytesIO()
        dce.export(model, (x,), buffer, input_names=["x"])
        return onnx.load_from_string(buffer.getvalue())
    if entry == "register_deform_conv2d_onnx_op":
        dce.register_deform_conv2d_onnx_op()
        try:
            return _torch_export(model, x, dynamo=False, opset_version=17)
        finally:
            dce.unregister_deform_conv2d_onnx_op()
    if entry == "create_deform_conv2d_custom_op":
        table = {torch.ops.torchvision.deform_conv2d.default: dce.create_deform_conv2d_custom_op()}
        return _torch_export(model, x, dynamo=True, custom_translation_table=table)
    return dce.decompose_model(_native(size, symbolic=entry.endswith("symbolic sizes"))).model


def _error_over_floor(model: onnx.ModelProto, size: str, pipeline: Pipeline, symbolic: bool = False) -> float:
    """The pipeline's error on ``model`` over the floor; OpenVINO leaves a convolution's bias apart
    in a model with ``symbolic`` sizes, whose floor counts that rounding (half_precision.py)."""
    out, half = pipeline.run(model, make_input(size))
    ref = reference(size)
    return ref.error(out) / ref.floor[half, symbolic and pipeline.openvino is not None]


@pytest.mark.parametrize("pipeline", PIPELINES, ids=[p.name for p in PIPELINES])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_default_export_within_twice_the_floor(entry: str, size: str, pipeline: Pipeline) -> None:
    symbolic = entry.endswith("symbolic sizes")
    assert _error_over_floor(default_export(entry, size), size, pipeline, symbolic) <= BOUND


@pytest.mark.parametrize("pipeline", PIPELINES, ids=[p.name for p in PIPELINES])
@pytest.mark.parametrize("size", LARGE_SIZES)
@pytest.mark.parametrize("lowering", HALF_SAFE)
def test_half_safe_lowering_within_twice_the_floor(lowering: str, size: str, pipeline: Pipeline) -> None:
    model = dce.decompose_model(_native(size, symbolic=False), lowering=lowering).model
    assert _error_over_floor(model, size, pipeline) <= BOUND


@pytest.mark.parametrize("pipeline", PIPELINES, ids=[p.name for p in PIPELINES])
@pytest.mark.parametrize("lowering", NOT_HALF_SAFE)
def test_grid_sample_is_not_half_safe_at_1024(lowering: str, pipeline: Pipeline) -> None:
    """What README says of the GridSample lowerings: far above the floor at 1024x1024 in every
    pipeline, ONNX Runtime's CPU provider included (the converted graph holds the grid in fp16)."""
    model = dce.decompose_model(_native("1024", symbolic=False), lowering=lowering).model
    assert _error_over_floor(model, "1024", pipeline) > 5 * BOUND


@pytest.mark.parametrize("pipeline", [p for p in PIPELINES if p.converter is None], ids=lambda p: p.name)
@pytest.mark.parametrize("size", list(SIZES))
def test_half_model_export_within_twice_the_floor(size: str, pipeline: Pipeline) -> None:
    """A model.half() export computes the DCN in float32 inside; OpenVINO demotes that to its
    inference precision too, which integer positions survive."""
    model, x = build_model().half(), torch.from_numpy(make_input(size)).half()
    buffer = io.BytesIO()
    dce.export(model, (x,), buffer, input_names=["x"])
    out, half = pipeline.run(onnx.load_from_string(buffer.getvalue()), make_input(size).astype(np.float16))
    ref = reference(size)
    assert ref.error(out) / ref.floor[half, False] <= BOUND
