"""Hand-built ONNX models with one DeformConv node, for the rewrite tests. No torch here.

The reference output of such a model is ONNX's reference evaluator running DeformConv itself
(``onnx.reference``, plain NumPy loops); test_onnx_rewrite.py checks that reference against
torchvision's kernel, so the runtime tests that have no torch compare against torchvision too.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_gather import Gather as _ReferenceGather
from onnx.reference.ops.op_grid_sample import GridSample as _ReferenceGridSample

from deform_conv2d_onnx_exporter.forms import FORMS, Form

Pair = tuple[int, int]


@dataclass(frozen=True)
class NodeCase:
    """One DeformConv node. Pairs are (h, w); pads are (h_begin, w_begin, h_end, w_end)."""

    in_channels: int = 4
    out_channels: int = 6
    height: int = 7
    width: int = 9
    kernel: Pair = (3, 3)
    strides: Pair = (1, 1)
    pads: tuple[int, int, int, int] = (1, 1, 1, 1)
    dilations: Pair = (1, 1)
    group: int = 1
    offset_group: int = 1
    mask: bool = True
    bias: bool = True
    batch: int = 1
    #: the batch as dim_param N in the model's inputs and output
    symbolic_batch: bool = False
    #: height and width as dim_params H, W (and the output's OH, OW)
    symbolic_size: bool = False
    dtype: Any = np.float32

    def with_(self, **changes: Any) -> NodeCase:
        return dataclasses.replace(self, **changes)

    @property
    def symbolic(self) -> bool:
        """Some dimension of the model's inputs is symbolic."""
        return self.symbolic_batch or self.symbolic_size

    @property
    def out_size(self) -> Pair:
        return (self._out(self.height, 0), self._out(self.width, 1))

    def _out(self, size: int, axis: int) -> int:
        extent = self.dilations[axis] * (self.kernel[axis] - 1) + 1
        return (size + self.pads[axis] + self.pads[axis + 2] - extent) // self.strides[axis] + 1

    @property
    def input_names(self) -> list[str]:
        return ["x", "offset", "mask"] if self.mask else ["x", "offset"]

    def __str__(self) -> str:
        base = NodeCase()
        changed = [
            f"{f.name}={getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(base, f.name)
        ]
        return ",".join(changed).replace(" ", "").replace("<class'numpy.", "").replace("'>", "") or "base"


#: Attribute coverage: each feature at least once, several combined.
CASES = [
    NodeCase(),
    NodeCase(pads=(2, 0, 1, 1), strides=(2, 1)),  # asymmetric pads
    NodeCase(pads=(0, 2, 1, 0), dilations=(2, 1), kernel=(2, 3)),
    NodeCase(group=2, offset_group=2, mask=False),
    NodeCase(in_channels=8, out_channels=4, group=2, offset_group=4, bias=False),
    NodeCase(mask=False, bias=False, kernel=(1, 1), pads=(0, 0, 0, 0)),
    NodeCase(symbolic_batch=True, symbolic_size=True, batch=2, strides=(1, 2), pads=(1, 2, 1, 2)),
    NodeCase(dtype=np.float64, offset_group=2),
]


def build(case: NodeCase, opset: int = 19, seed: int = 0) -> onnx.ModelProto:
    """A model ``y = DeformConv(x, W, offset, B, mask)`` with W and B as initializers."""
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(case.dtype))
    kh, kw = case.kernel
    taps = kh * kw
    oh, ow = case.out_size
    n = "N" if case.symbolic_batch else case.batch
    h, w, out_h, out_w = ("H", "W", "OH", "OW") if case.symbolic_size else (case.height, case.width, oh, ow)
    inputs = [
        helper.make_tensor_value_info("x", elem, [n, case.in_channels, h, w]),
        helper.make_tensor_value_info("offset", elem, [n, 2 * case.offset_group * taps, out_h, out_w]),
    ]
    if case.mask:
        mask_shape = [n, case.offset_group * taps, out_h, out_w]
        inputs.append(helper.make_tensor_value_info("mask", elem, mask_shape))
    weight = rng.standard_normal((case.out_channels, case.in_channels // case.group, kh, kw))
    initializers = [numpy_helper.from_array(weight.astype(case.dtype), "W")]
    node_inputs = ["x", "W", "offset", "B" if case.bias else "", "mask" if case.mask else ""]
    if case.bias:
        bias = rng.standard_normal(case.out_channels).astype(case.dtype)
        initializers.append(numpy_helper.from_array(bias, "B"))
    node = helper.make_node(
        "DeformConv",
        node_inputs,
        ["y"],
        name="dcn",
        kernel_shape=[kh, kw],
        strides=list(case.strides),
        pads=list(case.pads),
        dilations=list(case.dilations),
        group=case.group,
        offset_group=case.offset_group,
    )
    graph = helper.make_graph(
        [node],
        "one_deform_conv",
        inputs,
        [helper.make_tensor_value_info("y", elem, [n, case.out_channels, out_h, out_w])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9  # readable by every runtime tested, ONNX Runtime 1.24 included
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(
    case: NodeCase, seed: int = 1, batch: int | None = None, size: Pair | None = None
) -> dict[str, np.ndarray]:
    """Random inputs; offsets are normal × the kernel's extent, so many samples leave the image."""
    case = case.with_(
        batch=batch or case.batch, height=(size or (case.height, 0))[0], width=(size or (0, case.width))[1]
    )
    rng = np.random.default_rng(seed)
    taps = case.kernel[0] * case.kernel[1]
    oh, ow = case.out_size
    reach = max(k * d for k, d in zip(case.kernel, case.dilations))
    result = {
        "x": rng.standard_normal((case.batch, case.in_channels, case.height, case.width)),
        "offset": rng.standard_normal((case.batch, 2 * case.offset_group * taps, oh, ow)) * reach,
    }
    if case.mask:
        result["mask"] = rng.uniform(0, 1.5, (case.batch, case.offset_group * taps, oh, ow))
    return {k: v.astype(case.dtype) for k, v in result.items()}


#: Every form a deformable convolution node can be written in, by name; then the custom ones.
FORM_NAMES = [form.name for form in FORMS]
CUSTOM_FORMS = [form.name for form in FORMS if form.domain]


def fits(form_name: str, mask: bool, bias: bool, padding: Pair) -> tuple[bool, bool, Pair]:
    """(mask, bias, padding) changed as little as needed for ``form_name``'s writer to write them:
    mmcv's DCNv1 has neither mask nor bias, its DCNv2 always a mask, OpenVINO's no bias."""
    form = _form(form_name)
    if not form.domain:
        return mask, bias, padding
    if "mask" not in form.inputs:
        return False, False, padding
    if "bias" not in form.inputs:
        return mask, False, padding
    return True, bias, padding


def in_form(model: onnx.ModelProto, form_name: str, opset: int | None = None) -> onnx.ModelProto:
    """The model of :func:`build` with its node written as ``form_name``'s writer writes it.

    The attributes follow the writers' symbolic functions: mmcv writes (h, w) pairs and, for
    DCNv1, ``bias=0`` and ``im2col_step``; mmdeploy writes DCNv1's padding as (h, h, w, w);
    mmdeploy's OpenVINO rewriter writes ``pads`` as (h, h, w, w), ``groups`` and ``kernel_shape``.

    Args:
        opset: the default-domain opset of the result; None keeps the model's.
    """
    form = _form(form_name)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    node = result.graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    roles = dict(zip(("input", "weight", "offset", "bias", "mask"), list(node.input) + ["", ""]))
    inputs = [roles[role] for role in form.inputs]
    assert all(roles[r] in ("", *inputs) for r in roles), f"{form_name} has no place for {roles}"
    while inputs and not inputs[-1]:
        inputs.pop()
    h, w, h_end, w_end = attrs["pads"]
    assert (h, w) == (h_end, w_end), f"{form_name} pads symmetrically, got pads {attrs['pads']}"
    names = form.names
    written: dict[str, Any] = {
        names["stride"]: attrs["strides"],
        names["padding"]: {"pair": [h, w], "mmdeploy": [h, w], "openvino": [h, h, w, w]}[form.padding],
        names["dilation"]: attrs["dilations"],
        names.get("groups_alias", names["groups"]): attrs["group"],
        names["offset_groups"]: attrs["offset_group"],
    }
    if "im2col_step" in form.fixed:
        written.update(bias=0, im2col_step=32)
    if form.kernel_shape:
        written["kernel_shape"] = attrs["kernel_shape"]
    if form_name == "mmdeploy::MMCVDeformConv2d":
        written["padding"] = [h, h, w, w]
    new = helper.make_node(form.op_type, inputs, list(node.output), name=node.name, **written)
    new.domain = form.domain
    node.CopyFrom(new)
    default = opset or next(e.version for e in model.opset_import if e.domain == "")
    del result.opset_import[:]
    result.opset_import.extend([helper.make_opsetid("", default), helper.make_opsetid(form.domain, 1)])
    return result


def _form(name: str) -> Form:
    return next(form for form in FORMS if form.name == name)


class Gather(_ReferenceGather):
    """onnx < 1.23 calls ``indices.ascontiguousarray()``, which NumPy arrays do not have."""

    def _run(self, x, indices, axis=None):  # noqa: ANN001, ANN202
        return super()._run(np.ascontiguousarray(x), np.ascontiguousarray(indices), axis=axis)


class GridSample(_ReferenceGridSample):
    """onnx < 1.23 knows only opset 20's mode names; opset 16 says "bilinear" for "linear"."""

    def _run(self, X, grid, mode=None, padding_mode=None, align_corners=None):  # noqa: ANN001, ANN202, N803
        mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
        return super()._run(X, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)


#: Fixes for the reference evaluator of older onnx releases (harmless on newer ones).
REFERENCE_FIXES = [Gather, GridSample]
#: NumPy's choose, behind the reference evaluator's GatherElements, takes at most this many
#: choices (32 before NumPy 2, 64 from 2).
NUMPY_CHOOSE_LIMIT = 64 if int(np.__version__.split(".")[0]) >= 2 else 32


def reference_evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    """ONNX's reference evaluator for ``model``, with :data:`REFERENCE_FIXES`."""
    return ReferenceEvaluator(model, new_ops=REFERENCE_FIXES)


def reference_output(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The model run by ONNX's reference evaluator, which implements DeformConv directly."""
    (out,) = reference_evaluator(model).run(None, inputs)
    return out


def run_model(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs on ONNX Runtime's CPU provider, or on the reference evaluator where the
    installed ONNX Runtime cannot run it: ONNX DeformConv before 1.25, an opset above its own."""
    import onnxruntime

    from deform_conv2d_onnx_exporter.versions import onnxruntime_has_deformconv

    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    native = any(node.op_type == "DeformConv" for node in model.graph.node)
    has_deformconv = onnxruntime_has_deformconv(onnxruntime.__version__)
    if opset > onnxruntime_max_opset() or (native and not has_deformconv):
        return list(reference_evaluator(model).run(None, inputs))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(None, inputs))


def _onnxruntime_max_opset() -> int:
    """The highest opset whose Shape and Reshape the installed ONNX Runtime runs (probed).

    ONNX Runtime 1.15 refuses models stamped with opset 20 and has no Reshape-19 kernel.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # a refusal is the answer, not something to log
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])]
    for opset in range(onnx.defs.onnx_opset_version(), 12, -1):
        model = helper.make_model(
            helper.make_graph(nodes, "probe", [x], [y]),
            opset_imports=[helper.make_opsetid("", opset)],
            ir_version=8,
        )
        try:
            session = onnxruntime.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            session.run(None, {"x": np.zeros((2, 3), np.float32)})
        except Exception:  # noqa: BLE001 - onnxruntime's own error types
            continue
        return opset
    return 12


@functools.cache
def onnxruntime_max_opset() -> int:
    """:func:`_onnxruntime_max_opset`, probed once."""
    return _onnxruntime_max_opset()


@functools.cache
def expected(case: NodeCase, batch: int | None = None, size: Pair | None = None) -> np.ndarray:
    """The case's output on :func:`feeds` by the reference evaluator (slow loops: cached)."""
    return reference_output(build(case), feeds(case, batch=batch, size=size))


def tolerance(case: NodeCase) -> dict[str, float]:
    """assert_allclose's atol and rtol against the reference evaluator, for the case's dtype.

    For float64 the reference evaluator's DeformConv is itself only float32-accurate (2e-6 from
    torchvision's kernel, measured), whereas the decompositions match torchvision to 1e-15.
    """
    limit = 1e-5 if case.dtype == np.float64 else 1e-4
    return {"atol": limit, "rtol": limit}
