"""Property-based tests: every way of writing deform_conv2d to ONNX, on drawn calls, against torchvision.

One strategy draws a call of a path (the legacy exporter, the dynamo exporter, or ``decompose_model``
of a model built with ``onnx.helper``, its node ONNX DeformConv or one of mmcv's, mmdeploy's and
OpenVINO's operators): the lowering, the opset, the dtype, a static or symbolic batch (an empty one
included) and image size, the configuration and adversarial data. One test per path runs it, and one
per custom form and lowering; each result is compared with torchvision's kernel and, where the
installed ONNX Runtime has it, with its DeformConv running the same call as ONNX DeformConv.

The default profile ("ci", registered in conftest.py) runs a fixed, derandomised set, ``pytest
--hypothesis-profile=fuzz`` (``nox -s fuzz``) a random one: 60 or 500 examples of decompose_model of
DeformConv, a third as many of each custom form with each lowering and of the legacy exporter, and a
sixth of the dynamo exporter, whose exports take longer (:func:`budget`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
import pytest
import torch
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper
from onnx_models import CUSTOM_FORMS, NodeCase, build, fits, in_form, onnxruntime_max_opset
from support import (
    LOWERINGS,
    ORT_EMPTY_BATCH_MATMUL,
    ORT_HAS_DEFORMCONV,
    TORCH,
    Case,
    DeformConvCall,
    assert_matches,
    export,
    input_names,
    make_inputs,
    min_opset,
    missing_path,
    run,
)

from deform_conv2d_onnx_exporter import decompose_model
from deform_conv2d_onnx_exporter.lowering import LoweringOptions

DTYPES = [torch.float32, torch.float64] + ([torch.float16] if TORCH.cpu_float16_matmul else [])
#: ONNX DeformConv's versions; the model built with onnx.helper has one of them.
DEFORMCONV_OPSETS = [19, 22]
#: The opsets of the models with a custom form: mmcv and mmdeploy exported at 11 by default.
CUSTOM_FORM_OPSETS = [11, 13, 17, 19]
#: Lowerings every ONNX Runtime runs on an empty batch; older ones refuse the others' MatMul
#: broadcast over it (README, "Limits").
EMPTY_BATCH_LOWERINGS = {"gather_rows", "gathernd", "gatherelements", "native"}


@dataclass(frozen=True)
class Call:
    """One deform_conv2d call and the way it is written to ONNX.

    Attributes:
        path: ``"legacy"`` or ``"dynamo"`` (``export`` of the torch module), or ``"decompose"``
            (``decompose_model`` of the DeformConv model).
        lowering: ``lowering=`` of the path, ``"auto"`` included.
        opset: the exporter's ``opset_version``, or decompose_model's target opset; None leaves the
            exporter's default, or the DeformConv model's own.
        model_opset: the opset of the model built with onnx.helper, which decompose_model rewrites
            and, in ``form`` DeformConv, ONNX Runtime's DeformConv runs as the second reference.
        dtype: of the inputs, the weight and the bias.
        symbolic_batch, symbolic_size: whether the model's batch, and its height and width, are
            symbolic; a symbolic model is written from an example of another batch and size.
        case: the configuration; ``case.batch`` is the batch the model runs on (0: empty).
        form: the operator decompose_model reads (:data:`onnx_models.FORM_NAMES`); the second
            reference runs it as ONNX DeformConv at opset 19 or higher.
    """

    path: str
    lowering: str
    opset: Optional[int]
    model_opset: int
    dtype: torch.dtype
    symbolic_batch: bool
    symbolic_size: bool
    case: Case
    form: str = "DeformConv"

    @property
    def node_case(self) -> NodeCase:
        """The same call as one ONNX DeformConv node (symmetric pads)."""
        c = self.case
        dtype = torch.empty(0, dtype=self.dtype).numpy().dtype
        return NodeCase(
            in_channels=c.in_channels,
            out_channels=c.out_channels,
            height=c.height,
            width=c.width,
            kernel=c.kernel,
            strides=c.stride,
            pads=(*c.padding, *c.padding),
            dilations=c.dilation,
            group=c.groups,
            offset_group=c.offset_groups,
            mask=c.mask,
            bias=c.bias,
            batch=c.batch,
            symbolic_batch=self.symbolic_batch,
            symbolic_size=self.symbolic_size,
            dtype=dtype,
        )


def _opsets(path: str, lowering: str, dtype: torch.dtype, model_opset: int) -> list[Optional[int]]:
    """The opsets a call of ``path`` may ask for, where ONNX Runtime runs the lowering on ``dtype``."""
    lowest, highest = min_opset(lowering, dtype), onnxruntime_max_opset()
    if path == "legacy":
        return list(range(lowest, min(TORCH.legacy_max_opset, highest) + 1))
    if path == "dynamo":
        return [opset for opset in (None, 18) if (opset or TORCH.dynamo_default_opset) >= lowest] or [lowest]
    # decompose_model's default: the model's own opset, raised to the lowest the lowering needs
    own = [None] if lowest <= max(model_opset, LoweringOptions(lowering).min_opset()) <= highest else []
    return own + list(range(lowest, highest + 1))


@st.composite
def configurations(draw: st.DrawFn) -> Case:
    """Every argument of deform_conv2d, h and w drawn apart; images of 1 to 40 pixels with an output."""
    groups = draw(st.integers(1, 3))
    offset_groups = draw(st.integers(1, 3))
    in_channels = groups * offset_groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    padding = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    # The smallest image with an output: dilation·(k − 1) + 1 − 2·padding.
    height = draw(st.integers(max(1, dilation[0] * (kernel[0] - 1) + 1 - 2 * padding[0]), 40))
    width = draw(st.integers(max(1, dilation[1] * (kernel[1] - 1) + 1 - 2 * padding[1]), 40))
    return Case(
        in_channels=in_channels,
        out_channels=groups * draw(st.integers(1, 2)),
        height=height,
        width=width,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        offset_groups=offset_groups,
        mask=draw(st.booleans()),
        bias=draw(st.booleans()),
    )


@st.composite
def calls(draw: st.DrawFn, path: str, form: str = "DeformConv", lowering: Optional[str] = None) -> Call:
    """Calls of ``path`` that the installed torch and ONNX Runtime can write and run; for
    decompose_model, of a model in ``form``, and with ``lowering`` where given."""
    # an ONNX Runtime older than DeformConv's opset runs only the rewritten model, at a lower opset
    opsets = DEFORMCONV_OPSETS if form == "DeformConv" else CUSTOM_FORM_OPSETS
    runnable = [o for o in opsets if o <= onnxruntime_max_opset()] or opsets[:1]
    model_opset = draw(st.sampled_from(runnable))
    if lowering is None:
        lowering = draw(
            st.sampled_from(
                [lowering for lowering in ["auto", *LOWERINGS] if missing_path(path, lowering) is None]
            )
        )
    dtype = draw(st.sampled_from([d for d in DTYPES if _opsets(path, lowering, d, model_opset)]))
    opset = draw(st.sampled_from(_opsets(path, lowering, dtype, model_opset)))
    symbolic_batch, symbolic_size = draw(st.booleans()), draw(st.booleans())
    empty = symbolic_batch and (ORT_EMPTY_BATCH_MATMUL or lowering in EMPTY_BATCH_LOWERINGS)
    batch = draw(st.integers(0 if empty else 1, 3))
    case = draw(configurations()).with_(batch=batch)
    mask, bias, padding = fits(form, case.mask, case.bias, case.padding)
    case = case.with_(mask=mask, bias=bias, padding=padding)
    return Call(path, lowering, opset, model_opset, dtype, symbolic_batch, symbolic_size, case, form)


@dataclass(frozen=True)
class Data:
    """How a call's inputs are made: offsets from tiny to far outside, and samples put exactly on
    integers and on the window's edges (−1, 0, H−1, H), where the zero rules switch.

    Attributes:
        seed: of the random numbers.
        offset_scale: the offsets' standard deviation in pixels; None: the kernel's extent.
        on_edges: the share of samples moved exactly onto an edge or the image's middle row or column.
    """

    seed: int
    offset_scale: Optional[float]
    on_edges: float

    def inputs(self, case: Case, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """(x, offset[, mask]) for ``case``; masks lie in [0, 1.5) and are zero at a tenth of the taps."""
        rng = np.random.default_rng(self.seed)
        (kh, kw), (oh, ow) = case.kernel, case.out_size
        og, b = case.offset_groups, case.batch
        scale = float(max(kh, kw)) if self.offset_scale is None else self.offset_scale
        offset = rng.standard_normal((b, og, kh, kw, 2, oh, ow)) * scale
        if self.on_edges:
            # regular grid p0 + pk per (kh, kw, oh, ow) and axis
            i, j, oy, ox = np.meshgrid(
                np.arange(kh), np.arange(kw), np.arange(oh), np.arange(ow), indexing="ij"
            )
            base = [
                oy * case.stride[0] - case.padding[0] + i * case.dilation[0],
                ox * case.stride[1] - case.padding[1] + j * case.dilation[1],
            ]
            for axis, size in ((0, case.height), (1, case.width)):
                targets = np.array([-1, 0, size - 1, size, -2, size + 1, size // 2])
                chosen = rng.choice(targets, size=offset[..., axis, :, :].shape)
                on_target = rng.random(chosen.shape) < self.on_edges
                offset[..., axis, :, :] = np.where(on_target, chosen - base[axis], offset[..., axis, :, :])
        x = rng.standard_normal((b, case.in_channels, case.height, case.width))
        inputs = [x, offset.reshape(b, og * kh * kw * 2, oh, ow)]
        if case.mask:
            mask = rng.random((b, og * kh * kw, oh, ow)) * 1.5
            mask[rng.random(mask.shape) < 0.1] = 0.0
            inputs.append(mask)
        return tuple(torch.from_numpy(a).to(dtype) for a in inputs)


def data() -> st.SearchStrategy[Data]:
    return st.builds(
        Data,
        seed=st.integers(0, 2**32 - 1),
        offset_scale=st.sampled_from([1e-3, 0.5, None, 50.0, 1e4]),
        on_edges=st.sampled_from([0.0, 0.3, 1.0]),
    )


def torchvision_call(call: Call, deform_conv: onnx.ModelProto) -> DeformConvCall:
    """torchvision's deform_conv2d with the weight and bias of the DeformConv model."""
    module = DeformConvCall(call.case, call.dtype)
    weights = {i.name: numpy_helper.to_array(i) for i in deform_conv.graph.initializer}
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weights["W"]))
        if module.bias is not None:
            module.bias.copy_(torch.from_numpy(weights["B"]))
    return module


def write(
    call: Call, deform_conv: onnx.ModelProto, module: DeformConvCall, inputs: tuple[torch.Tensor, ...]
) -> bytes:
    """The call written to ONNX by its path. A symbolic model is exported from an example of batch 2
    and a larger image, so that it runs on ``inputs`` only if those sizes stayed symbolic."""
    if call.path == "decompose":
        custom = call.form != "DeformConv"
        source = in_form(deform_conv, call.form, call.model_opset) if custom else deform_conv
        return decompose_model(source, call.opset, call.lowering).model.SerializeToString()
    c = call.case
    example = make_inputs(
        c,
        call.dtype,
        batch=2 if call.symbolic_batch else c.batch,
        size=(c.height + 2, c.width + 3) if call.symbolic_size else None,
    )
    axes = ((0,) if call.symbolic_batch else ()) + ((2, 3) if call.symbolic_size else ())
    return export(
        module,
        example if axes else inputs,
        call.path,
        call.lowering,
        input_names(c),
        dynamic=axes,
        opset=call.opset,
    )


def assert_within_reference_error(
    got: np.ndarray, reference: np.ndarray, exact: np.ndarray, against: str
) -> None:
    """``got`` is as close to exact (float64) arithmetic as 3× ``reference``'s own float32 error."""
    assert got.shape == reference.shape, f"shape {got.shape} != {against} {reference.shape}"
    floor = 1e-5 * max(1.0, float(np.abs(exact).max(initial=0.0)))
    allowed = 3 * float(np.abs(reference - exact).max(initial=0.0)) + floor
    error = float(np.abs(got - exact).max(initial=0.0))
    assert error <= allowed, f"error {error:.3g} against float64 > 3x {against} error + {floor:.1g}"


def budget(share: float) -> settings:
    """``share`` of the profile's examples (60 in CI, 500 in ``nox -s fuzz``), its other settings kept.

    The shares follow the cost of an example: an export by the dynamo exporter takes about 1.5 s, by
    the legacy exporter 0.1 s, decompose_model 0.01 s (the comparisons then about 0.05 s).
    """
    return settings(max_examples=max(1, round(settings.default.max_examples * share)))


def check(call: Call, data: Data) -> None:
    """The call written to ONNX and run on ONNX Runtime gives torchvision's output, and ONNX Runtime's
    DeformConv's where it has one; in float16, float64 arithmetic's."""
    inputs = data.inputs(call.case, call.dtype)
    names = input_names(call.case)
    deform_conv = build(call.node_case, max(call.model_opset, DEFORMCONV_OPSETS[0]))
    module = torchvision_call(call, deform_conv)
    model = write(call, deform_conv, module, inputs)
    got = run(model, names, inputs)

    if call.dtype == torch.float16:
        # torchvision's float16 CPU kernel rounds at every step (0.2 off float64 arithmetic on a
        # 37-row image, measured), the graph samples in float32 and rounds once: judge it against
        # float64 arithmetic on the same float16 inputs, within float16's tolerance.
        exact = copy.deepcopy(module).double()(*(t.double() for t in inputs)).detach()
        assert_matches(got, exact.half(), call.dtype, "float64 arithmetic's")
        return
    references = {"torchvision's": module(*inputs).detach().numpy()}
    if ORT_HAS_DEFORMCONV:  # its CPU DeformConv: float and double
        references["onnxruntime DeformConv's"] = run(deform_conv.SerializeToString(), names, inputs)
    ops = {node.op_type for node in onnx.load_from_string(model).graph.node}
    # GridSample and DeformConv compute the float32 sampling point their own way: judge them
    # against float64 arithmetic, allowing 3x each reference's own error there. The gather
    # lowerings repeat torchvision's arithmetic, and float64 leaves room for either.
    if call.dtype == torch.float32 and ops & {"GridSample", "DeformConv"}:
        exact = copy.deepcopy(module).double()(*(t.double() for t in inputs)).detach().numpy()
        for against, reference in references.items():
            assert_within_reference_error(got, reference, exact, against)
    else:
        for against, reference in references.items():
            assert_matches(got, torch.from_numpy(reference), call.dtype, against)


@budget(1 / 3)
@given(call=calls("legacy"), data=data())
def test_legacy_exporter(call: Call, data: Data) -> None:
    check(call, data)


@pytest.mark.dynamo
@budget(1 / 6)
@given(call=calls("dynamo"), data=data())
def test_dynamo_exporter(call: Call, data: Data) -> None:
    check(call, data)


# The hold-out's Range bug: a 0-d constant written with shape (1,), which ONNX Runtime refuses as
# Range's limit ("Input to 'Range' op should be scalars"); only a static batch > 1 made one. Opset 12: every
# ONNX Runtime of the matrix runs it.
@example(
    call=Call("decompose", "gather_rows", 12, 19, torch.float32, False, False, Case(batch=2)),
    data=Data(seed=0, offset_scale=None, on_edges=0.0),
)
@budget(1)
@given(call=calls("decompose"), data=data())
def test_decompose_model(call: Call, data: Data) -> None:
    check(call, data)


@pytest.mark.parametrize("lowering", ["auto", *LOWERINGS])
@pytest.mark.parametrize("form", CUSTOM_FORMS)
@budget(1 / 3)
@given(draw=st.data(), data=data())
def test_decompose_model_of_each_custom_form(
    form: str, lowering: str, draw: st.DataObject, data: Data
) -> None:
    """Every custom form with every lowering: its own drawn calls (20 in CI, 167 in ``nox -s fuzz``)."""
    if missing_path("decompose", lowering) is not None:
        pytest.fail(f"this ONNX Runtime cannot run {lowering}: {missing_path('decompose', lowering)}")
    call = draw.draw(calls("decompose", form, lowering))
    # what was drawn, for --hypothesis-show-statistics
    sizes = "symbolic" if call.symbolic_batch or call.symbolic_size else "static"
    event(f"{str(call.dtype).removeprefix('torch.')}, {sizes} sizes")
    check(call, data)
