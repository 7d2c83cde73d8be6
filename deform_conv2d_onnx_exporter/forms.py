"""The operators an ONNX file writes a deformable convolution as, read into one description.

No torch here. Each form's schema was read from the source that writes it and the runtime that
runs it (README, "Already have an ONNX file"):

- ONNX ``DeformConv`` (opset 19 and 22): inputs (X, W, offset[, B][, mask]); ``strides``,
  ``pads`` (h_begin, w_begin, h_end, w_end), ``dilations``, ``group``, ``offset_group``,
  ``kernel_shape``.
- ``mmcv::MMCVDeformConv2d`` (mmcv's ``DeformConv2dFunction.symbolic``, DCNv1): inputs (input,
  offset, weight); ``stride``, ``padding``, ``dilation`` as (h, w), ``groups``, ``deform_groups``,
  ``bias`` (always 0: mmcv refuses a bias) and ``im2col_step`` (a CUDA batching knob).
- ``mmcv::MMCVModulatedDeformConv2d`` (``ModulatedDeformConv2dFunction.symbolic``, DCNv2): inputs
  (input, offset, mask, weight[, bias]); ``stride``, ``padding``, ``dilation``, ``groups``,
  ``deform_groups``.
- ``mmdeploy::MMCVDeformConv2d`` and ``mmdeploy::MMCVModulatedDeformConv2d`` (mmdeploy's symbolic
  rewriters): the same inputs and attributes without ``bias``/``im2col_step``. mmdeploy writes
  DCNv1's ``padding`` as 4 values, (pad_h, pad_h, pad_w, pad_w); 2 values are read as (h, w).
- ``org.openvinotoolkit::DeformableConv2D`` (mmdeploy's OpenVINO rewriter, read by OpenVINO's
  ONNX frontend): inputs (input, offset, weight[, mask]); ``strides``, ``pads``, ``dilations``,
  ``group`` (OpenVINO reads it) or ``groups`` (mmdeploy writes it), ``deformable_groups``,
  ``kernel_shape``. mmdeploy writes ``pads`` as (pad_h, pad_h, pad_w, pad_w); OpenVINO reads them
  as ONNX pads (h_begin, w_begin, h_end, w_end), so it pads mmdeploy's files wrongly where
  pad_h != pad_w. Pads of the form (a, a, b, b) are read as mmdeploy writes them; any other 4
  values, which mmdeploy never writes, as ONNX pads.

Every form's offsets are laid out (offset_group, kh, kw, [dy, dx]) and its masks (offset_group, kh,
kw), as torchvision's; samples outside the image read zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, get_args

import onnx
from onnx import helper

from .lowering import NATIVE_MIN_OPSET
from .params import DeformConvExportError

#: What a node input holds.
Role = Literal["input", "weight", "offset", "mask", "bias"]
ROLES: tuple[Role, ...] = get_args(Role)
#: How a form writes its padding: ``onnx`` (h_begin, w_begin, h_end, w_end); ``pair`` (h, w) or
#: one int for both; ``mmdeploy`` a pair or (pad_h, pad_h, pad_w, pad_w); ``openvino`` (pad_h,
#: pad_h, pad_w, pad_w) as mmdeploy writes it, else ONNX's 4 values.
PaddingLayout = Literal["onnx", "pair", "mmdeploy", "openvino"]
Quad = tuple[int, int, int, int]


@dataclass(frozen=True)
class Form:
    """One operator that writes a deformable convolution.

    Attributes:
        domain: the operator's domain ("" for ONNX's own).
        op_type: the operator's name.
        inputs: what each input holds, in the node's order.
        required: how many leading inputs must be given.
        names: the attribute that carries stride, padding, dilation, groups and offset groups
            (``groups`` may have a second spelling: ``names["groups_alias"]``).
        padding: how the padding attribute is laid out.
        fixed: attributes the form may carry with the one value the rewrite accepts (None: any int).
        kernel_shape: whether the form may state the kernel's (kh, kw), which must be the weight's.
    """

    domain: str
    op_type: str
    inputs: tuple[Role, ...]
    required: int
    names: dict[str, str]
    padding: PaddingLayout
    fixed: dict[str, Optional[int]]
    kernel_shape: bool

    @property
    def name(self) -> str:
        """``DeformConv`` for ONNX's operator, else ``domain::op_type``."""
        return f"{self.domain}::{self.op_type}" if self.domain else self.op_type

    @property
    def attributes(self) -> list[str]:
        """Every attribute the form may carry, sorted."""
        return sorted({*self.names.values(), *self.fixed, *(["kernel_shape"] if self.kernel_shape else [])})


_ONNX_NAMES = {
    "stride": "strides",
    "padding": "pads",
    "dilation": "dilations",
    "groups": "group",
    "offset_groups": "offset_group",
}
_MMCV_NAMES = {
    "stride": "stride",
    "padding": "padding",
    "dilation": "dilation",
    "groups": "groups",
    "offset_groups": "deform_groups",
}
_OPENVINO_NAMES = {**_ONNX_NAMES, "offset_groups": "deformable_groups", "groups_alias": "groups"}
_DCN_V1: tuple[Role, ...] = ("input", "offset", "weight")
_DCN_V2: tuple[Role, ...] = ("input", "offset", "mask", "weight", "bias")

FORMS = (
    Form("", "DeformConv", ("input", "weight", "offset", "bias", "mask"), 3, _ONNX_NAMES, "onnx", {}, True),
    Form("mmcv", "MMCVDeformConv2d", _DCN_V1, 3, _MMCV_NAMES, "pair", {"bias": 0, "im2col_step": None},
         False),
    Form("mmcv", "MMCVModulatedDeformConv2d", _DCN_V2, 4, _MMCV_NAMES, "pair", {}, False),
    Form("mmdeploy", "MMCVDeformConv2d", _DCN_V1, 3, _MMCV_NAMES, "mmdeploy", {}, False),
    Form("mmdeploy", "MMCVModulatedDeformConv2d", _DCN_V2, 4, _MMCV_NAMES, "mmdeploy", {}, False),
    Form("org.openvinotoolkit", "DeformableConv2D", ("input", "offset", "weight", "mask"), 3,
         _OPENVINO_NAMES, "openvino", {}, True),
)  # fmt: skip
#: The custom domains of :data:`FORMS`, whose opset imports go once no node uses them.
CUSTOM_DOMAINS = tuple(sorted({form.domain for form in FORMS if form.domain}))
_BY_KEY = {(form.domain, form.op_type): form for form in FORMS}


def form_of(node: onnx.NodeProto) -> Optional[Form]:
    """The form ``node`` is written in, None when it is no deformable convolution."""
    domain = "" if node.domain == "ai.onnx" else node.domain
    return _BY_KEY.get((domain, node.op_type))


@dataclass(frozen=True)
class DeformConvNode:
    """A node of any form, read: tensor names by role and the attributes as ONNX DeformConv's.

    Pairs are (h, w); ``pads`` are (h_begin, w_begin, h_end, w_end).

    Attributes:
        node: the node itself.
        form: the form it is written in.
        tensors: the input names by role (every role); None for an input not given or that the
            form does not have.
        kernel_shape: (kh, kw) where the node states it.
    """

    node: onnx.NodeProto
    form: Form
    tensors: dict[Role, Optional[str]]
    strides: tuple[int, int]
    pads: Quad
    dilations: tuple[int, int]
    group: int
    offset_group: int
    kernel_shape: Optional[tuple[int, int]]

    @property
    def where(self) -> str:
        """The node, for error messages: ``mmcv::MMCVDeformConv2d node 'dcn'``."""
        return describe(self.node, self.form)


def describe(node: onnx.NodeProto, form: Form) -> str:
    """``<form> node '<name>'``, as errors name a node."""
    return f"{form.name} node {node.name!r}"


def read(node: onnx.NodeProto, form: Form, imports: dict[str, int]) -> DeformConvNode:
    """Read ``node`` of ``form``: its inputs by role and its attributes, checked one by one.

    Args:
        imports: the model's opset imports, version by domain ("" for ONNX's own).

    Raises:
        DeformConvExportError: naming the node and the input or attribute, what was expected
            and what was got: an operator its opset does not have, missing or extra inputs or
            outputs, unknown attributes, values of the wrong type, length or range.
    """
    where = describe(node, form)
    _check_opset(where, form, imports)
    tensors = _tensors(where, node, form)
    attrs = {a.name: a for a in node.attribute}
    unknown = sorted(set(attrs) - set(form.attributes))
    if unknown:
        raise DeformConvExportError(
            f"{where}: unsupported attribute {', '.join(unknown)}; expected only {', '.join(form.attributes)}"
        )
    for name, value in form.fixed.items():
        if name in attrs:
            got = _int(where, attrs[name])
            if value is not None and got != value:
                raise DeformConvExportError(f"{where}: {name}: expected {value}, got {got}")
    names = form.names
    kernel = attrs.get("kernel_shape")
    return DeformConvNode(
        node=node,
        form=form,
        tensors=tensors,
        strides=_pair(where, attrs.get(names["stride"]), form, default=1, minimum=1),
        pads=_pads(where, attrs.get(names["padding"]), form.padding),
        dilations=_pair(where, attrs.get(names["dilation"]), form, default=1, minimum=1),
        group=_groups(where, attrs, names),
        offset_group=_positive(where, attrs.get(names["offset_groups"])),
        kernel_shape=None if kernel is None else _pair(where, kernel, form, default=1, minimum=1),
    )


def _check_opset(where: str, form: Form, imports: dict[str, int]) -> None:
    if form.domain not in imports:
        raise DeformConvExportError(
            f"{where}: the model must import the domain {form.domain!r} for this node, "
            f"got imports of {sorted(imports)}"
        )
    if not form.domain and imports[""] < NATIVE_MIN_OPSET:
        raise DeformConvExportError(
            f"{where}: ONNX has DeformConv from opset {NATIVE_MIN_OPSET}, got a model of opset {imports['']}"
        )


def _tensors(where: str, node: onnx.NodeProto, form: Form) -> dict[Role, Optional[str]]:
    """The node's inputs by role; its one output must be named."""
    names = list(node.input)
    if len(names) > len(form.inputs):
        raise DeformConvExportError(
            f"{where}: expected at most {len(form.inputs)} inputs ({', '.join(form.inputs)}), "
            f"got {len(names)}"
        )
    missing = [role for role, name in zip(form.inputs, names + [""] * len(form.inputs)) if not name]
    missing = [role for role in missing if form.inputs.index(role) < form.required]
    if missing:
        raise DeformConvExportError(
            f"{where}: input {missing[0]} (input {form.inputs.index(missing[0])}) is required, got "
            f"{len(names)} inputs {names}"
        )
    if len(node.output) != 1 or not node.output[0]:
        raise DeformConvExportError(f"{where}: expected one named output, got {list(node.output)}")
    given = dict(zip(form.inputs, names))
    return {role: given.get(role) or None for role in ROLES}


def _ints(where: str, attribute: onnx.AttributeProto) -> list[int]:
    """An INTS attribute's values, or an INT's as one value."""
    if attribute.type == onnx.AttributeProto.INT:
        return [int(attribute.i)]
    if attribute.type == onnx.AttributeProto.INTS:
        return [int(v) for v in attribute.ints]
    kind = onnx.AttributeProto.AttributeType.Name(attribute.type).lower()
    value = helper.get_attribute_value(attribute)
    raise DeformConvExportError(f"{where}: {attribute.name}: expected ints, got {kind} {value!r}")


def _int(where: str, attribute: onnx.AttributeProto) -> int:
    values = _ints(where, attribute)
    if attribute.type != onnx.AttributeProto.INT:
        raise DeformConvExportError(f"{where}: {attribute.name}: expected one int, got ints {values}")
    return values[0]


def _pair(
    where: str, attribute: Optional[onnx.AttributeProto], form: Form, *, default: int, minimum: int
) -> tuple[int, int]:
    """An (h, w) attribute; mmcv's writers give one int for both where the user gave one."""
    if attribute is None:
        return default, default
    values = _ints(where, attribute)
    if len(values) == 1 and attribute.type == onnx.AttributeProto.INT and form.domain:
        values = values * 2
    if len(values) != 2 or min(values) < minimum:
        raise DeformConvExportError(
            f"{where}: {attribute.name}: expected 2 values (h, w), each >= {minimum}, got {values}"
        )
    return values[0], values[1]


def _pads(where: str, attribute: Optional[onnx.AttributeProto], layout: PaddingLayout) -> Quad:
    """The padding as (h_begin, w_begin, h_end, w_end)."""
    if attribute is None:
        return 0, 0, 0, 0
    values = _ints(where, attribute)
    if min(values, default=0) < 0:
        raise DeformConvExportError(f"{where}: {attribute.name}: expected values >= 0, got {values}")
    if layout == "onnx" and len(values) == 4:
        return values[0], values[1], values[2], values[3]
    if layout in ("pair", "mmdeploy") and len(values) == 2:
        return values[0], values[1], values[0], values[1]
    if layout == "pair" and len(values) == 1 and attribute.type == onnx.AttributeProto.INT:
        return values[0], values[0], values[0], values[0]
    if layout == "mmdeploy" and len(values) == 4 and values[0] == values[1] and values[2] == values[3]:
        return values[0], values[2], values[0], values[2]
    if layout == "openvino" and len(values) == 4:
        mmdeploys = values[0] == values[1] and values[2] == values[3]
        return (
            (values[0], values[2], values[0], values[2])
            if mmdeploys
            else (values[0], values[1], values[2], values[3])
        )
    raise DeformConvExportError(f"{where}: {attribute.name}: expected {_EXPECTED_PADS[layout]}, got {values}")


_EXPECTED_PADS = {
    "onnx": "4 values (h_begin, w_begin, h_end, w_end)",
    "pair": "2 values (h, w)",
    "mmdeploy": "2 values (h, w) or 4 as mmdeploy writes them (h, h, w, w)",
    "openvino": "4 values, (h, h, w, w) as mmdeploy writes them or (h_begin, w_begin, h_end, w_end)",
}


def _positive(where: str, attribute: Optional[onnx.AttributeProto]) -> int:
    if attribute is None:
        return 1
    value = _int(where, attribute)
    if value < 1:
        raise DeformConvExportError(f"{where}: {attribute.name}: expected an int >= 1, got {value}")
    return value


def _groups(where: str, attrs: dict[str, onnx.AttributeProto], names: dict[str, str]) -> int:
    """The convolution groups, from either spelling where the form has two; they must agree."""
    spellings = [names["groups"], *([names["groups_alias"]] if "groups_alias" in names else [])]
    values = {name: _positive(where, attrs[name]) for name in spellings if name in attrs}
    if len(set(values.values())) > 1:
        raise DeformConvExportError(f"{where}: {' and '.join(values)}: expected one value, got {values}")
    return next(iter(values.values()), 1)
